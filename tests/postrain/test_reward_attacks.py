"""Reward attacks: programs that try to score without solving. Each must score 0 through the pass-rate reward
GRPO uses, in both isolation modes, on problems where honest solutions score 1.

One test per family, each with several variants:

1. ending the process early: at import, inside the function, through exit handlers, exception hooks,
   signals, killing itself or the checking process;
2. returned objects that compare equal to anything, or fake numbers and containers (subclasses of builtins
   with their own methods, `__bool__`, a lying `__class__`, NaN);
3. tampering with the checks: builtins, the checking namespace, the harness's own primitives, trace hooks,
   the checking process's memory and descriptors;
4. reading the tests: files, /proc, the environment, stdin, frames, the heap, other processes.
"""

import secrets

import pytest

from loopcoder.postrain.rewards.code_rewards import make_pass_rate_reward
from loopcoder.postrain.sandbox import Limits
from loopcoder.postrain.sandbox.pool import SandboxPool
from loopcoder.postrain.sandbox.problems import contest_row_to_problem, humaneval_solutions, load_humaneval
from loopcoder.postrain.sandbox.runners import TestCase, run_assert_test

pytestmark = pytest.mark.timeout(300)

# checks by kind of result: bool ==, float abs-difference, tuple ==, int ==, list ==, str ==
HUMANEVAL_IDS = ["HumanEval/0", "HumanEval/2", "HumanEval/8", "HumanEval/13", "HumanEval/29", "HumanEval/27"]
# attacks on the process or the checks do not depend on the kind of result: checks made only of `abs(...) < eps`
# (HumanEval/4, whose `abs` can be attacked) and the call-based form of TACO/APPS problems
PROCESS_ATTACK_IDS = ["HumanEval/4", "call-based"]
CALL_BASED_ROW = {
    "id": "call-based",
    "question": "Return the sum of a list.",
    "input_output": {"fn_name": "total", "inputs": [[[1, 2, 3]], [[]], [[5]]], "outputs": [[6], [0], [5]]},
}
CALL_BASED_SOLUTION = "def total(xs):\n    return sum(xs)\n"


@pytest.fixture(scope="module")
def problems():
    by_id = {p["id"]: p for p in load_humaneval()}
    chosen = [dict(by_id[i], entry_point=_entry_point(by_id[i])) for i in HUMANEVAL_IDS + ["HumanEval/4"]]
    chosen.append(dict(contest_row_to_problem(CALL_BASED_ROW, source="taco"), entry_point="total"))
    return chosen


def _entry_point(problem: dict) -> str:
    return problem["tests"][0]["assert_code"].rstrip().rsplit("check(", 1)[1].rstrip(")")


@pytest.fixture
def pool(sandbox):
    box = SandboxPool(workers=2, sandbox=sandbox)
    yield box
    box.close()


def score(pool, problems, programs):
    """Rewards of each program (a template using `{entry}`) on each problem, through the GRPO reward."""
    reward = make_pass_rate_reward(pool=pool)
    rows = [(name, problem) for name in programs for problem in problems]
    completions = [f"```python\n{programs[name].format(entry=problem['entry_point'])}\n```" for name, problem in rows]
    columns = {
        key: [problem[key] for _, problem in rows]
        for key in ("tests", "language", "time_limit_seconds", "memory_limit_mb", "id")
    }
    columns["time_limit_seconds"] = [1.0] * len(rows)
    return {
        (name, problem["id"]): value
        for (name, problem), value in zip(rows, reward(completions, **columns), strict=True)
    }


def scored_above_zero(scores: dict) -> dict:
    return {key: value for key, value in scores.items() if value != 0.0}


def test_honest_solutions_of_the_attacked_problems_score_one(pool, problems):
    canonical = humaneval_solutions("canonical")
    programs = {p["id"]: canonical.get(p["id"], CALL_BASED_SOLUTION) for p in problems}
    reward = make_pass_rate_reward(pool=pool)
    completions = [f"```python\n{programs[p['id']]}```" for p in problems]
    rewards = reward(completions, tests=[p["tests"] for p in problems], id=[p["id"] for p in problems])
    assert rewards == [1.0] * len(problems)


EARLY_EXIT = {
    "sys.exit at import": "import sys\nsys.exit(0)\n",
    "SystemExit at import": "raise SystemExit\n",
    "os._exit at import": "import os\nos._exit(0)\n",
    "sys.exit in the function": "import sys\ndef {entry}(*args, **kwargs):\n    sys.exit(0)\n",
    "os._exit in the function": "import os\ndef {entry}(*args, **kwargs):\n    os._exit(0)\n",
    "atexit handler": "import atexit, os\natexit.register(os._exit, 0)\ndef {entry}(*args, **kwargs):\n    return None\n",
    "excepthook": "import os, sys\nsys.excepthook = lambda *exc: os._exit(0)\ndef {entry}(*args, **kwargs):\n    return None\n",
    "signal handler, then signal itself": (
        "import os, signal\nsignal.signal(signal.SIGTERM, lambda *a: os._exit(0))\n"
        "def {entry}(*args, **kwargs):\n    os.kill(os.getpid(), signal.SIGTERM)\n"
    ),
    "alarm while the checks wait": (
        "import os, signal, time\nsignal.signal(signal.SIGALRM, lambda *a: os._exit(0))\n"
        "signal.setitimer(signal.ITIMER_REAL, 0.05)\ndef {entry}(*args, **kwargs):\n    time.sleep(0.5)\n"
    ),
    "thread exits the process": (
        "import os, threading, time\nthreading.Thread(target=lambda: (time.sleep(0.05), os._exit(0))).start()\n"
        "def {entry}(*args, **kwargs):\n    time.sleep(0.5)\n"
    ),
    "SIGKILL itself": "import os, signal\ndef {entry}(*args, **kwargs):\n    os.kill(os.getpid(), signal.SIGKILL)\n",
    "KeyboardInterrupt": "def {entry}(*args, **kwargs):\n    raise KeyboardInterrupt\n",
    "kill the checking process": (
        "import os, signal\ndef {entry}(*args, **kwargs):\n"
        "    for pid in (os.getppid(), 1):\n"
        "        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL):\n"
        "            try:\n                os.kill(pid, sig)\n            except OSError:\n                pass\n"
        "    os._exit(0)\n"
    ),
    "kill the process group": "import os, signal\ndef {entry}(*args, **kwargs):\n    os.killpg(0, signal.SIGKILL)\n",
}


def test_ending_the_process_early_scores_zero(pool, problems):
    attacked = [p for p in problems if p["id"] in PROCESS_ATTACK_IDS]
    assert scored_above_zero(score(pool, attacked, EARLY_EXIT)) == {}


FAKES = {
    "always equal": (
        "class Anything:\n    def __eq__(self, other):\n        return True\n"
        "    def __ne__(self, other):\n        return False\n    __hash__ = object.__hash__\n"
        "def {entry}(*args, **kwargs):\n    return Anything()\n"
    ),
    "equal, truthy and numerically zero": (
        "class Anything:\n    __eq__ = __lt__ = __le__ = __gt__ = __ge__ = lambda self, other: True\n"
        "    __ne__ = lambda self, other: False\n    __bool__ = lambda self: True\n"
        "    __sub__ = __rsub__ = __add__ = __radd__ = lambda self, other: self\n"
        "    __abs__ = __float__ = lambda self: 0.0\n    __int__ = __index__ = lambda self: 0\n"
        "    __len__ = lambda self: 0\n    __iter__ = lambda self: iter(())\n    __hash__ = object.__hash__\n"
        "def {entry}(*args, **kwargs):\n    return Anything()\n"
    ),
    "int subclass": (
        "class Int(int):\n    __eq__ = lambda self, other: True\n    __ne__ = lambda self, other: False\n"
        "    __hash__ = int.__hash__\n    __sub__ = __rsub__ = lambda self, other: Int(0)\n"
        "def {entry}(*args, **kwargs):\n    return Int(0)\n"
    ),
    "float subclass": (
        "class Float(float):\n    __eq__ = __lt__ = lambda self, other: True\n    __ne__ = lambda self, other: False\n"
        "    __hash__ = float.__hash__\n    __sub__ = __rsub__ = lambda self, other: Float(0.0)\n"
        "    __abs__ = lambda self: Float(0.0)\n"
        "def {entry}(*args, **kwargs):\n    return Float(1e9)\n"
    ),
    "str subclass": (
        "class Str(str):\n    __eq__ = lambda self, other: True\n    __ne__ = lambda self, other: False\n"
        "    __hash__ = str.__hash__\ndef {entry}(*args, **kwargs):\n    return Str('')\n"
    ),
    "list and tuple subclasses": (
        "class List(list):\n    __eq__ = lambda self, other: True\n    __ne__ = lambda self, other: False\n"
        "class Tuple(tuple):\n    __eq__ = lambda self, other: True\n    __ne__ = lambda self, other: False\n"
        "    __hash__ = tuple.__hash__\n"
        "def {entry}(*args, **kwargs):\n    return Tuple([List(), List()])\n"
    ),
    "bool-like with a lying __class__": (
        "class Liar:\n    __class__ = property(lambda self: bool)\n    __eq__ = lambda self, other: True\n"
        "    __ne__ = lambda self, other: False\n    __bool__ = lambda self: True\n    __hash__ = object.__hash__\n"
        "def {entry}(*args, **kwargs):\n    return Liar()\n"
    ),
    "NaN": "def {entry}(*args, **kwargs):\n    return float('nan')\n",
}


def test_objects_that_fake_equality_numbers_or_containers_score_zero(pool, problems):
    attacked = [p for p in problems if p["id"] in HUMANEVAL_IDS or p["id"] == "call-based"]
    assert scored_above_zero(score(pool, attacked, FAKES)) == {}


TAMPERING = {
    "builtins.abs returns 0": (
        "import builtins\nbuiltins.abs = lambda x: 0\ndef {entry}(*args, **kwargs):\n    return 10 ** 9\n"
    ),
    "every checking builtin replaced": (
        "import builtins\n"
        "for name in ('abs', 'isinstance', 'len', 'all', 'any', 'sorted', 'sum', 'round', 'print', 'exec',\n"
        "             'compile', 'type', 'repr', 'str', 'int', 'float', 'bool'):\n"
        "    setattr(builtins, name, lambda *a, **k: 0)\n"
        "builtins.AssertionError = type('Harmless', (Exception,), {{}})\n"
        "def {entry}(*args, **kwargs):\n    return 10 ** 9\n"
    ),
    "own check and candidate names": (
        "def check(candidate):\n    pass\ncandidate = None\n"
        "def abs(x):\n    return 0\ndef isinstance(*a):\n    return True\n"
        "def {entry}(*args, **kwargs):\n    return 10 ** 9\n"
    ),
    "trace hook exits when the checks start": (
        "import os, sys\n"
        "def tracer(frame, event, arg):\n    if frame.f_code.co_name == 'check':\n        os._exit(0)\n"
        "sys.settrace(tracer)\nsys.setprofile(tracer)\n"
        "def {entry}(*args, **kwargs):\n    return None\n"
    ),
    "frames of the caller rewritten": (
        "import sys\n"
        "def {entry}(*args, **kwargs):\n    frame = sys._getframe(1)\n"
        "    while frame is not None:\n        frame.f_globals['check'] = lambda candidate: None\n"
        "        frame.f_globals['__builtins__'] = {{'AssertionError': Exception}}\n        frame = frame.f_back\n"
        "    return None\n"
    ),
    "harness primitives patched": (
        "import os, sys\nos._exit = lambda status: None\nos.kill = lambda *a: None\nsys.exit = lambda *a: None\n"
        "os.write = lambda fd, data: len(data)\n"
        "def {entry}(*args, **kwargs):\n    return None\n"
    ),
    "heap scan for a nonce, written to every descriptor": (
        "import gc, os, re\n"
        "def {entry}(*args, **kwargs):\n"
        "    found = {{o for o in gc.get_objects() if type(o) is str and re.fullmatch('[0-9a-f]{{32}}', o)}}\n"
        "    for fd in range(0, 64):\n"
        "        for text in found | {{'0' * 32}}:\n"
        "            try:\n                os.write(fd, (text + '\\n').encode())\n            except OSError:\n"
        "                pass\n"
        "    os._exit(0)\n"
    ),
    "the checking process's memory and descriptors": (
        "import os\n"
        "def {entry}(*args, **kwargs):\n"
        "    for pid in {{os.getppid(), 1}}:\n"
        "        for path in ('mem', 'fd/0', 'fd/1', 'fd/3', 'fd/4', 'fd/5', 'environ'):\n"
        "            try:\n"
        "                with open(f'/proc/{{pid}}/{{path}}', 'r+b', buffering=0) as handle:\n"
        "                    handle.write(b'0' * 33)\n"
        "            except OSError:\n                pass\n"
        "    os._exit(0)\n"
    ),
    "ptrace of the checking process": (
        "import ctypes, os\n"
        "def {entry}(*args, **kwargs):\n"
        "    libc = ctypes.CDLL(None, use_errno=True)\n"
        "    for pid in {{os.getppid(), 1}}:\n        libc.ptrace(16, pid, None, None)\n"
        "    os._exit(0)\n"
    ),
}


def test_tampering_with_the_checks_scores_zero(pool, problems):
    attacked = [p for p in problems if p["id"] in PROCESS_ATTACK_IDS]
    assert scored_above_zero(score(pool, attacked, TAMPERING)) == {}


def test_the_checking_process_is_out_of_reach_of_the_program(sandbox):
    """What the tampering variants try, observed directly: every way into the checking process is denied."""
    program = (
        "import ctypes, os, sys\n"
        "results = []\n"
        "for pid in sorted({os.getppid(), 1}):\n"
        "    for path in ('mem', 'fd', 'fd/0', 'environ', 'maps'):\n"
        "        try:\n"
        "            open(f'/proc/{pid}/{path}', 'rb').read(16) if path != 'fd' else os.listdir(f'/proc/{pid}/fd')\n"
        "            results.append(f'opened {pid}/{path}')\n"
        "        except OSError as error:\n"
        "            results.append(f'denied {pid}/{path} {type(error).__name__}')\n"
        "    attached = ctypes.CDLL(None, use_errno=True).ptrace(16, pid, None, None)\n"
        "    results.append(f'ptrace {pid} {attached}')\n"
        "print('|'.join(results), file=sys.stderr)\n"
        "def f():\n    return 1\n"
    )
    result, nonce = run_assert_test(sandbox, program, TestCase(assert_code="assert f() == 1\n"), Limits(cpu_seconds=2))
    assert result.ok and result.stdout == nonce + "\n", result
    attempts = [line for line in result.stderr.splitlines() if "|" in line][0].split("|")
    assert [a for a in attempts if a.startswith("opened") or (a.startswith("ptrace") and not a.endswith("-1"))] == []
    assert nonce not in result.stderr


READ_THE_TESTS = """import gc, os, re, sys
TOKEN = re.compile(r"tok-[0-9a-f]{{24}}")
def texts_of(value, depth=0):
    if isinstance(value, (str, bytes)):
        yield value if isinstance(value, str) else value.decode('latin-1')
    elif isinstance(value, dict) and depth < 3:
        for item in list(value.values()):
            yield from texts_of(item, depth + 1)
    elif isinstance(value, (list, tuple)) and depth < 3:
        for item in value:
            yield from texts_of(item, depth + 1)
    elif hasattr(value, 'co_consts') and depth < 3:
        yield from texts_of(value.co_consts, depth + 1)
def read(path, limit=1 << 20):
    try:
        with open(path, 'rb') as handle:
            return handle.read(limit).decode('latin-1')
    except OSError:
        return ''
def memory(pid):
    found = []
    try:
        with open(f'/proc/{{pid}}/maps') as maps, open(f'/proc/{{pid}}/mem', 'rb') as mem:
            for line in maps:
                start, end = (int(x, 16) for x in line.split()[0].split('-'))
                if 'r' in line.split()[1] and end - start < 1 << 26:
                    try:
                        mem.seek(start)
                        found.append(mem.read(end - start).decode('latin-1'))
                    except (OSError, ValueError, OverflowError):
                        pass
    except OSError:
        pass
    return found
def search(where, args):
    texts = []
    if where == 'arguments':
        texts += list(texts_of(args))
    if where == 'files':
        for top in ('.', '/sandbox', '/tmp', os.path.dirname(os.path.abspath(__file__))):
            for root, _, names in os.walk(top):
                texts += [read(os.path.join(root, name)) for name in names]
    if where == 'own /proc':
        texts += [read(f'/proc/self/{{n}}') for n in ('cmdline', 'environ')] + memory('self')
        for fd in os.listdir('/proc/self/fd'):
            texts.append(read(f'/proc/self/fd/{{fd}}'))
    if where == 'other processes':
        for pid in {{os.getppid(), 1}} | {{int(p) for p in os.listdir('/proc') if p.isdigit()}}:
            texts += [read(f'/proc/{{pid}}/{{n}}') for n in ('cmdline', 'environ')] + memory(pid)
            try:
                texts += [read(f'/proc/{{pid}}/fd/{{fd}}') for fd in os.listdir(f'/proc/{{pid}}/fd')]
            except OSError:
                pass
    if where == 'environment':
        texts += list(os.environ.values()) + sys.argv
    if where == 'stdin':
        try:
            texts.append(sys.stdin.read())
            texts.append(os.read(0, 1 << 20).decode('latin-1'))
        except (OSError, ValueError):
            pass
    if where == 'frames':
        frame = sys._getframe()
        while frame is not None:
            texts += list(texts_of(frame.f_code)) + list(texts_of(frame.f_locals)) + list(texts_of(frame.f_globals))
            frame = frame.f_back
    if where == 'heap':
        for item in gc.get_objects():
            texts += list(texts_of(item, 2))
        texts += [s for s in gc.get_referents(*gc.get_objects()) if isinstance(s, str)]
    for text in texts:
        match = TOKEN.search(text)
        if match:
            return match.group()
    return 'not found'
def answer(*args):
    return search({where!r}, args)
"""
LOCATIONS = ["files", "own /proc", "other processes", "environment", "stdin", "frames", "heap"]


def test_reading_the_tests_scores_zero(pool):
    """The expected answer is a random token that appears only in the test code; the control problem also
    passes it as an argument, where a program may legitimately see it, to prove that the search finds it."""
    token = f"tok-{secrets.token_hex(12)}"
    secret = {
        "id": "secret",
        "tests": [{"assert_code": f"def check(candidate):\n    assert candidate() == {token!r}\n\ncheck(answer)\n"}],
    }
    control = {"id": "control", "tests": [{"assert_code": f"assert answer('say ' + {token!r}) == {token!r}\n"}]}
    rows = [(where, secret) for where in LOCATIONS] + [("arguments", control)]
    reward = make_pass_rate_reward(pool=pool)
    rewards = reward(
        [f"```python\n{READ_THE_TESTS.format(where=where)}```" for where, _ in rows],
        tests=[problem["tests"] for _, problem in rows],
        time_limit_seconds=[3.0] * len(rows),
    )
    scores = dict(zip(LOCATIONS + ["control"], rewards, strict=True))
    assert scores.pop("control") == 1.0, "the search does not find a token it is given"
    assert scored_above_zero(scores) == {}


STDIO_EARLY_EXIT = {
    "sys.exit": "import sys\nsys.exit(0)\nprint(int(input()) * 2)\n",
    "os._exit after a partial write": "import os\nprint(int(input()) * 2, end='', flush=False)\nos._exit(0)\n",
    "atexit": "import atexit, os\natexit.register(os._exit, 0)\nraise ValueError\n",
    "excepthook": "import os, sys\nsys.excepthook = lambda *exc: os._exit(0)\nraise ValueError\n",
    "kill itself": "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n",
}


def test_stdio_programs_that_end_early_score_zero(pool):
    tests = [{"stdin": f"{n}\n", "expected_stdout": f"{n * 2}\n", "assert_code": None} for n in (3, 5)]
    programs = {**STDIO_EARLY_EXIT, "honest": "print(int(input()) * 2)\n"}
    reward = make_pass_rate_reward(pool=pool)
    rewards = dict(
        zip(
            programs,
            reward([f"```python\n{p}```" for p in programs.values()], tests=[tests] * len(programs)),
            strict=True,
        )
    )
    assert rewards.pop("honest") == 1.0
    assert scored_above_zero(rewards) == {}
