"""`loopcoder data card` and `loopcoder data publish`: dataset cards and Hub uploads."""

from __future__ import annotations

import argparse
from pathlib import Path


def register_publishing(commands: argparse._SubParsersAction) -> None:
    card = commands.add_parser(
        "card", help="write a Hugging Face dataset card (README.md) for a job output",
        description="Write PATH/README.md: Hub metadata (configs per shard folder, features, licence, size), how "
        "the data was built, statistics, charts (PATH/charts/*.png) and loading snippets.",
    )  # fmt: skip
    card.add_argument("path", help="job output directory (local path or URI)")
    card.add_argument("--name", help="dataset name shown on the card (default: the directory name)")
    card.add_argument("--license", default="other", help="SPDX licence id of the dataset (default: other)")
    card.add_argument("--no-charts", action="store_true", help="skip the PNG charts")
    card.set_defaults(handler=_card)

    publish = commands.add_parser(
        "publish", help="upload a job output and its card to a Hugging Face dataset repo",
        description="Create the dataset repo if needed and upload every file of PATH (hidden files and _internal state excepted), "
        "with a generated card if PATH has no README.md. Resumable: rerun after an interruption.",
    )  # fmt: skip
    publish.add_argument("path", type=Path, help="job output directory (local)")
    publish.add_argument("--repo-id", required=True, help="ORG/NAME of the dataset repo")
    publish.add_argument("--private", action="store_true", help="create the repo as private")
    publish.add_argument("--revision", help="branch to upload to (created if missing)")
    publish.add_argument("--license", default="other", help="licence for a generated card")
    publish.add_argument("--dry-run", action="store_true", help="list the files that would be uploaded")
    publish.set_defaults(handler=_publish)


def _card(args: argparse.Namespace) -> int:
    from loopcoder.pipelines.publishing import write_card

    path = write_card(args.path, name=args.name, license=args.license, with_charts=not args.no_charts)
    print(f"wrote {path}")
    return 0


def _publish(args: argparse.Namespace) -> int:
    from loopcoder.pipelines.publishing import CARD_NAME, files_to_publish, publish

    listing = publish(args.path, args.repo_id, private=args.private, revision=args.revision,
                      dry_run=args.dry_run, license=args.license)  # fmt: skip
    generated = CARD_NAME not in files_to_publish(args.path)
    for name in listing:
        print(f"{name}{'  (generated)' if generated and name == CARD_NAME else ''}")
    print(f"{'would upload' if args.dry_run else 'uploaded'} {len(listing)} file(s) to datasets/{args.repo_id}")
    return 0
