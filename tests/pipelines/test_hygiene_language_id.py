"""Natural-language identification (CLD2) of text and code comments; programming language from content."""

import pytest

from loopcoder.pipelines.io.languages import language_from_content
from loopcoder.pipelines.steps.language_id import LanguageIdConfig, LanguageIdentifier, comments_of, identify

# The labelled multilingual sample: passages of public-domain texts (constitutions and declarations,
# whose official texts are not under copyright, and novels long out of copyright), quoted from
# memory, so their wording may differ slightly from the published originals. Each is over 200 characters.
SAMPLE = {
    "en": "It is a truth universally acknowledged, that a single man in possession of a good fortune, must be in "
    "want of a wife. However little known the feelings or views of such a man may be on his first entering a "
    "neighbourhood, this truth is so well fixed in the minds of the surrounding families, that he is considered "
    "the rightful property of some one or other of their daughters.",
    "fr": "Les représentants du peuple français, constitués en Assemblée nationale, considérant que l'ignorance, "
    "l'oubli ou le mépris des droits de l'homme sont les seules causes des malheurs publics et de la corruption "
    "des gouvernements, ont résolu d'exposer, dans une déclaration solennelle, les droits naturels, inaliénables "
    "et sacrés de l'homme.",
    "de": "Die Würde des Menschen ist unantastbar. Sie zu achten und zu schützen ist Verpflichtung aller "
    "staatlichen Gewalt. Das Deutsche Volk bekennt sich darum zu unverletzlichen und unveräußerlichen "
    "Menschenrechten als Grundlage jeder menschlichen Gemeinschaft, des Friedens und der Gerechtigkeit in der "
    "Welt. Die nachfolgenden Grundrechte binden Gesetzgebung, vollziehende Gewalt und Rechtsprechung als "
    "unmittelbar geltendes Recht.",
    "es": "En un lugar de la Mancha, de cuyo nombre no quiero acordarme, no ha mucho tiempo que vivía un hidalgo "
    "de los de lanza en astillero, adarga antigua, rocín flaco y galgo corredor. Una olla de algo más vaca que "
    "carnero, salpicón las más noches, duelos y quebrantos los sábados, lantejas los viernes, algún palomino de "
    "añadidura los domingos, consumían las tres partes de su hacienda.",
    "it": "L'Italia è una Repubblica democratica, fondata sul lavoro. La sovranità appartiene al popolo, che la "
    "esercita nelle forme e nei limiti della Costituzione. La Repubblica riconosce e garantisce i diritti "
    "inviolabili dell'uomo, sia come singolo sia nelle formazioni sociali ove si svolge la sua personalità, e "
    "richiede l'adempimento dei doveri inderogabili di solidarietà politica, economica e sociale.",
    "pt": "Todos são iguais perante a lei, sem distinção de qualquer natureza, garantindo-se aos brasileiros e aos "
    "estrangeiros residentes no País a inviolabilidade do direito à vida, à liberdade, à igualdade, à segurança "
    "e à propriedade, nos termos seguintes: homens e mulheres são iguais em direitos e obrigações, nos termos "
    "desta Constituição.",
    "nl": "Allen die zich in Nederland bevinden, worden in gelijke gevallen gelijk behandeld. Discriminatie wegens "
    "godsdienst, levensovertuiging, politieke gezindheid, ras, geslacht of op welke grond dan ook, is niet "
    "toegestaan. Niemand heeft voorafgaand verlof nodig om door de drukpers gedachten of gevoelens te "
    "openbaren, behoudens ieders verantwoordelijkheid volgens de wet.",
    "sv": "All offentlig makt i Sverige utgår från folket. Den svenska folkstyrelsen bygger på fri åsiktsbildning "
    "och på allmän och lika rösträtt. Den förverkligas genom ett representativt och parlamentariskt statsskick "
    "och genom kommunal självstyrelse. Den offentliga makten utövas under lagarna.",
    "pl": "Przyrodzona i niezbywalna godność człowieka stanowi źródło wolności i praw człowieka i obywatela. Jest "
    "ona nienaruszalna, a jej poszanowanie i ochrona jest obowiązkiem władz publicznych. Wszyscy są wobec prawa "
    "równi. Wszyscy mają prawo do równego traktowania przez władze publiczne. Nikt nie może być dyskryminowany w "
    "życiu politycznym, społecznym lub gospodarczym z jakiejkolwiek przyczyny.",
    "cs": "Lidé jsou svobodní a rovní v důstojnosti i v právech. Základní práva a svobody jsou nezadatelné, "
    "nezcizitelné, nepromlčitelné a nezrušitelné. Základní práva a svobody se zaručují všem bez rozdílu pohlaví, "
    "rasy, barvy pleti, jazyka, víry a náboženství, politického či jiného smýšlení, národního nebo sociálního "
    "původu, příslušnosti k národnostní nebo etnické menšině, majetku, rodu nebo jiného postavení.",
    "tr": "Herkes, dil, ırk, renk, cinsiyet, siyasi düşünce, felsefi inanç, din, mezhep ve benzeri sebeplerle "
    "ayırım gözetilmeksizin kanun önünde eşittir. Kadınlar ve erkekler eşit haklara sahiptir. Devlet, bu "
    "eşitliğin yaşama geçmesini sağlamakla yükümlüdür. Hiçbir kişiye, aileye, zümreye veya sınıfa imtiyaz "
    "tanınamaz.",
    "ru": "Человек, его права и свободы являются высшей ценностью. Признание, соблюдение и защита прав и свобод "
    "человека и гражданина - обязанность государства. Российская Федерация - Россия есть демократическое "
    "федеративное правовое государство с республиканской формой правления. Носителем суверенитета и "
    "единственным источником власти в Российской Федерации является ее многонациональный народ.",
    "ja": "日本国民は、正当に選挙された国会における代表者を通じて行動し、われらとわれらの子孫のために、"
    "諸国民との協和による成果と、わが国全土にわたつて自由のもたらす恵沢を確保し、政府の行為によつて再び戦争の"
    "惨禍が起ることのないやうにすることを決意し、ここに主権が国民に存することを宣言し、この憲法を確定する。"
    "そもそも国政は、国民の厳粛な信託によるものであつて、その権威は国民に由来し、その権力は国民の代表者が"
    "これを行使し、その福利は国民がこれを享受する。",
    "zh": "凡具有中华人民共和国国籍的人都是中华人民共和国公民。中华人民共和国公民在法律面前一律平等。"
    "国家尊重和保障人权。任何公民享有宪法和法律规定的权利，同时必须履行宪法和法律规定的义务。"
    "中华人民共和国公民有言论、出版、集会、结社、游行、示威的自由。中华人民共和国公民有宗教信仰自由。"
    "任何国家机关、社会团体和个人不得强制公民信仰宗教或者不信仰宗教，不得歧视信仰宗教的公民和不信仰宗教的公民。"
    "国家保护正常的宗教活动。中华人民共和国公民的人身自由不受侵犯。",
}


def doc(content, path="README.md", language="Markdown"):
    return {"id": "i", "repo": "r", "path": path, "language": language, "content": content,
            "size_bytes": len(content.encode("utf-8", "surrogatepass")), "license": None, "decisions": []}  # fmt: skip


def test_accuracy_on_the_labelled_multilingual_sample():
    assert len(SAMPLE) >= 10 and all(len(text) > 200 for text in SAMPLE.values())
    step = LanguageIdentifier()
    predicted = {}
    for label, text in SAMPLE.items():
        d = doc(text)
        assert step.run(d) is None
        predicted[label] = d["natural_language"]
    accuracy = sum(predicted[label] == label for label in SAMPLE) / len(SAMPLE)
    assert accuracy >= 0.95, predicted
    assert step.stats.to_dict()["extra"] == {f"language:{label}": 1 for label in SAMPLE}


def test_allowed_languages_drop_the_others_and_short_text_is_undetermined():
    step = LanguageIdentifier(LanguageIdConfig(allowed=("en", "fr")))
    assert step.run(doc(SAMPLE["fr"])) is None
    assert step.run(doc(SAMPLE["de"])) == "natural_language"
    short = doc("Bonjour tout le monde.")
    assert step.run(short) is None and short["natural_language"] == "und"
    assert LanguageIdentifier(drop_undetermined=True).run(doc("ok")) == "undetermined_language"
    stats = step.stats.to_dict()
    assert stats["dropped"] == {"natural_language": 1}
    assert stats["extra"] == {"language:de": 1, "language:fr": 1, "language:und": 1}


def test_code_is_identified_by_its_comments_and_docstrings():
    french = SAMPLE["fr"].split(", ")
    python = '"""' + SAMPLE["fr"] + '"""\n\n' + "\n".join(f"x{i} = {i}  # {part}" for i, part in enumerate(french))
    c_code = "/* " + SAMPLE["de"] + " */\nint main(void) {\n    return 0; // " + SAMPLE["pl"][:60] + "\n}\n"
    sql = "-- " + SAMPLE["es"] + "\nSELECT a FROM t WHERE b = 'x--y';\n"
    english_code = "def f(x):\n    return x * 2\n" * 30
    results = {}
    step = LanguageIdentifier(allowed=("en",))
    for name, content, language in (("py", python, "Python"), ("c", c_code, "C"), ("sql", sql, "SQL"),
                                    ("plain", english_code, "Python")):  # fmt: skip
        d = doc(content, path=f"a.{name}", language=language)
        results[name] = (step.run(d), d["natural_language"])
    assert results == {
        "py": ("natural_language", "fr"),
        "c": ("natural_language", "de"),
        "sql": ("natural_language", "es"),
        "plain": (None, "und"),  # no comments: nothing to identify, kept
    }
    assert "SELECT" not in comments_of(sql, "SQL") and "int main" not in comments_of(c_code, "C")


def test_binaryish_and_control_characters_are_undetermined_not_errors():
    step = LanguageIdentifier()
    noisy = doc("\x00\x01\x02\ud800\x7f\x9f" * 500 + "\ufffe" * 100, path="blob", language="unknown")
    assert step.run(noisy) is None and noisy["natural_language"] == "und"
    mixed = doc(SAMPLE["en"] + "\x00\x07\ud800" + SAMPLE["en"])
    assert step.run(mixed) is None and mixed["natural_language"] == "en"
    assert identify("1234567890 " * 100) == "und"


@pytest.mark.parametrize(
    ("content", "language"),
    [
        ("#!/usr/bin/env python3\nprint('hi')\n", "Python"),
        ("#!/usr/bin/python3.11 -u\nprint('hi')\n", "Python"),
        ("#!/bin/bash\nset -e\n", "Shell"),
        ("#!/usr/bin/env -S node --experimental-modules\nconsole.log(1)\n", "JavaScript"),
        ("#!/usr/bin/env ruby\nputs 1\n", "Ruby"),
        ("# -*- mode: perl -*-\nprint 1;\n", "Perl"),
        ("#!/bin/sh\n# -*- mode: python -*-\n", "Shell"),
        (";; -*- Lisp -*-\n(defun f ())\n", "unknown"),
        ("x = 1\n\n# vim: set ft=python ts=4:\n", "Python"),
        ("<?php\necho 1;\n", "PHP"),
        ("<!DOCTYPE html>\n<html><body></body></html>\n", "HTML"),
        ('package main\n\nimport "fmt"\n\nfunc main() {\n\tfmt.Println(1)\n}\n', "Go"),
        ("#include <vector>\nstd::vector<int> v;\n", "C++"),
        ("#include <stdio.h>\nint main(void)\n{\n    return 0;\n}\n", "C"),
        ("import os\n\ndef main():\n    return os.getcwd()\n", "Python"),
        ("use std::io;\nfn main() {\n    let mut s = String::new();\n}\n", "Rust"),
        ("Dear diary, today was fine.\n", "unknown"),
    ],
)
def test_programming_language_from_content(content, language):
    assert language_from_content(content) == language


def test_unknown_extension_files_get_their_language_column_from_content():
    step = LanguageIdentifier()
    d = doc("#!/usr/bin/env python3\n# " + SAMPLE["it"] + "\nprint(1)\n", path="bin/tool", language="unknown")
    assert step.run(d) is None
    assert d["language"] == "Python" and d["natural_language"] == "it"
    assert step.stats.to_dict()["extra"] == {"code_language:Python": 1, "language:it": 1}


def test_job_config_builds_the_hygiene_steps_with_their_knobs():
    from loopcoder.pipelines.clean.job import JobConfig

    job = JobConfig.from_dict(
        {
            "name": "h",
            "output": "out",
            "inputs": [{"kind": "jsonl", "path": "x.jsonl"}],
            "steps": [
                {"secrets": {"emails": False}},
                {"language_id": {"allowed": ["en"]}},
                {"licence": {"opt_out": ["a/b"]}},
            ],
        }  # fmt: skip
    )
    names = [(s.name, getattr(s, "config", None)) for s in job.build_steps()]
    assert [n for n, _ in names] == ["decode", "secrets", "language_id", "licence"]
    assert names[1][1].emails is False and names[2][1].allowed == ("en",) and names[3][1].opt_out == ("a/b",)
    with pytest.raises(ValueError, match="unknown key"):
        JobConfig.from_dict({"name": "h", "output": "o", "inputs": [{"kind": "jsonl", "path": "x"}],
                             "steps": [{"language_id": {"languages": ["en"]}}]})  # fmt: skip
