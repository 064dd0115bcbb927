"""Rebuild fire_plugin/leaderboard_data/ (the RobustBench leaderboard snapshot) from a RobustBench checkout.

Copies ``model_info/<dataset>/<threat_model>/*.json`` for the AutoAttack leaderboards (``Linf`` and ``L2``; the
``corruptions`` folders are skipped: they are not ranked by AutoAttack), RobustBench's ``LICENSE`` verbatim, and
writes ``SOURCE.json`` and ``README.md`` naming the repository, the commit and the license. The files are
RobustBench's data (MIT license), copied unchanged.

Run: ``python tools/update_leaderboard_snapshot.py /path/to/robustbench [--commit SHA] [--date ISO-DATE]``.
The commit is read with ``git rev-parse HEAD`` when the checkout is a git work tree; pass ``--commit`` (and
``--date``) for an exported tree.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
from pathlib import Path

REPOSITORY = "https://github.com/RobustBench/robustbench"
THREAT_MODELS = ("Linf", "L2")
DEST = Path(__file__).resolve().parents[1] / "fire_plugin" / "leaderboard_data"

README = """# RobustBench leaderboard snapshot

`model_info/<dataset>/<threat_model>/<model_id>.json` are RobustBench's leaderboard entries, copied unchanged from
{repository} (folder `model_info/`) at commit `{commit}` ({date}). Only the AutoAttack leaderboards are included
(threat models {threat_models}); the `corruptions` folders are left out. Entries: {counts}.

License: RobustBench is released under the MIT license, Copyright (c) 2020 Francesco Croce, Maksym Andriushchenko,
Vikash Sehwag. Its LICENSE file is shipped verbatim next to this README as `LICENSE-robustbench`; the model_info files
are data of the RobustBench repository and fall under its MIT license (the other licenses listed in that file
concern model weights, none of which are shipped here).

`fire_plugin.leaderboard.place` ranks a model_info file among these entries. Rebuild the snapshot from a newer
RobustBench checkout with `python tools/update_leaderboard_snapshot.py /path/to/robustbench`.
"""


def git_commit(checkout: Path) -> tuple[str, str]:
    """(commit sha, committer date) of a git work tree."""
    out = subprocess.run(["git", "-C", str(checkout), "show", "-s", "--format=%H %cI", "HEAD"],
                         check=True, capture_output=True, text=True).stdout.split()
    return out[0], out[1]


def rebuild(checkout: Path, commit: str, date: str, dest: Path = DEST) -> dict[str, int]:
    src = checkout / "model_info"
    if not src.is_dir():
        raise SystemExit(f"{checkout} has no model_info/ folder: pass the root of a RobustBench checkout")
    license_file = checkout / "LICENSE"
    if not license_file.is_file():
        raise SystemExit(f"{checkout} has no LICENSE file")
    if (dest / "model_info").exists():
        shutil.rmtree(dest / "model_info")
    counts: dict[str, int] = {}
    for dataset_dir in sorted(p for p in src.iterdir() if p.is_dir()):
        for tm in THREAT_MODELS:
            files = sorted((dataset_dir / tm).glob("*.json"))
            if not files:
                continue
            out = dest / "model_info" / dataset_dir.name / tm
            out.mkdir(parents=True, exist_ok=True)
            for f in files:
                json.loads(f.read_text(encoding="utf-8"))  # refuse to ship a broken file
                shutil.copyfile(f, out / f.name)
            counts[f"{dataset_dir.name}/{tm}"] = len(files)
    shutil.copyfile(license_file, dest / "LICENSE-robustbench")
    source = {"repository": REPOSITORY, "commit": commit, "date": date, "license": "MIT",
              "threat_models": list(THREAT_MODELS), "counts": counts}
    (dest / "SOURCE.json").write_text(json.dumps(source, indent=2) + "\n", encoding="utf-8")
    (dest / "README.md").write_text(README.format(
        repository=REPOSITORY, commit=commit, date=date, threat_models=", ".join(THREAT_MODELS),
        counts=", ".join(f"{k} {v}" for k, v in counts.items())), encoding="utf-8")
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkout", type=Path, help="root of a RobustBench checkout (holds model_info/ and LICENSE)")
    parser.add_argument("--commit", help="commit of the checkout (default: git rev-parse HEAD)")
    parser.add_argument("--date", default="", help="commit date (default: from git)")
    args = parser.parse_args()
    commit, date = args.commit, args.date
    if commit is None:
        commit, date = git_commit(args.checkout)
    counts = rebuild(args.checkout, commit, date)
    print(f"wrote {DEST} from {commit}: {counts}")


if __name__ == "__main__":
    main()
