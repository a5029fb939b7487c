"""The commands on data sets and their label tables: build, import, look, change, export; and the app."""

from __future__ import annotations

import argparse
import filecmp
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from labelloop.cli.common import print_table, progress_bar
from labelloop.data import storage
from labelloop.data.workspace import (
    WORKSPACE_ENV,
    DatasetPaths,
    app_dir,
    list_datasets,
    open_table,
    resolve_workspace,
)
from labelloop.errors import UserError

APP_PACKAGE = Path(__file__).resolve().parent.parent / "app"  # found by path: the CLI never imports the app
APP_SCRIPT = APP_PACKAGE / "main.py"
LAUNCHER = '''"""The app's entry script for this workspace, written by `labelloop app` at every start (edits are lost).

Streamlit serves static/ beside its main script at /app/static/ and reads .streamlit/config.toml beside it:
with this script here, in the workspace's cache, what a server writes for the browser (map files, thumbnail
links) lives with the workspace, never in the installed package (unwritable in site-packages, and shared by
every server and test run of a checkout). The app itself is the package's: labelloop.app.main.
"""

from labelloop.app.main import main

# Streamlit runs this script as __main__; a process the app starts with spawn or forkserver imports it again as
# __mp_main__, and must not start the whole app in there.
if __name__ == "__main__":
    main()
'''


def cmd_demo(args: argparse.Namespace) -> None:
    from labelloop.data.demo import DEMO_NAME, DemoSettings, build_demo

    workspace = resolve_workspace(args.workspace)
    if args.if_missing and list_datasets(workspace):
        print(f"workspace {workspace} already has data sets: {', '.join(list_datasets(workspace))}")
        return
    settings = DemoSettings(per_class=args.per_class, seed=args.seed)
    with progress_bar("checking demo images") as progress:
        table, report = build_demo(workspace, args.name or DEMO_NAME, settings, progress=progress)
    print(f"built demo data set '{args.name or DEMO_NAME}' in {workspace}: {report.describe()}")
    print(f"(the {len(report.skipped)} skipped files are broken on purpose, to show what the import report looks like)")


def cmd_app(args: argparse.Namespace, streamlit_args: Sequence[str] = ()) -> None:
    """Start the web app: Streamlit on the workspace's entry script (:func:`write_launcher`), in this process
    (the Streamlit server replaces it).

    The app's own settings (bound to 127.0.0.1, static files served) are the package's ``.streamlit/config.toml``,
    copied beside that script, where Streamlit reads them; ``streamlit_args`` (``--server.address ...``) go to
    ``streamlit run`` and win over them.
    """
    if not APP_SCRIPT.exists():
        raise UserError(f"The app is missing from this installation ({APP_SCRIPT}): reinstall labelloop.")
    workspace = resolve_workspace(args.workspace)
    if not storage.is_remote(workspace):
        Path(workspace).mkdir(parents=True, exist_ok=True)
    script = write_launcher(workspace)
    env = {**os.environ, WORKSPACE_ENV: str(workspace)}
    command = [sys.executable, "-m", "streamlit", "run", str(script), "--server.port", str(args.port), *streamlit_args]
    print(f"Starting the app on the data sets in {workspace}: open http://127.0.0.1:{args.port} in your browser (Ctrl+C stops it).", flush=True)
    os.execve(sys.executable, command, env)


def write_launcher(workspace: str | os.PathLike | None) -> Path:
    """Lay out the folder an app server on ``workspace`` runs from (:func:`labelloop.data.workspace.app_dir`);
    returns its entry script, the one to give `streamlit run` (or AppTest).

    Beside the script: the package's ``.streamlit/config.toml`` and ``static/`` with a copy of the package's
    three.js (``static/vendor/``; a copy, not a link: Streamlit refuses to serve a file whose real path is
    outside ``static/``), and the ``maps/`` and ``thumbs/`` the server fills. Files already current are left
    alone, so servers already running on this workspace are undisturbed.
    """
    folder = app_dir(workspace)
    for sub in (".streamlit", "static/maps", "static/thumbs"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    _install(LAUNCHER.encode(), folder / "main.py")
    _install(APP_PACKAGE / ".streamlit" / "config.toml", folder / ".streamlit" / "config.toml")
    vendor = APP_PACKAGE / "static" / "vendor"
    for source in sorted(vendor.rglob("*")) if vendor.is_dir() else []:  # absent until scripts/setup.sh has run npm
        if source.is_file():
            _install(source, folder / "static" / "vendor" / source.relative_to(vendor))
    return folder / "main.py"


def _install(source: Path | bytes, target: Path) -> None:
    """Make ``target`` hold ``source`` (a file's or these bytes), atomically, unless it already does."""
    if target.is_file() and (target.read_bytes() == source if isinstance(source, bytes) else filecmp.cmp(source, target, shallow=False)):
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    if isinstance(source, bytes):
        tmp.write_bytes(source)
    else:
        shutil.copyfile(source, tmp)
    os.replace(tmp, target)


def cmd_list(args: argparse.Namespace) -> None:
    names = list_datasets(args.workspace)
    rows = []
    for name in names:
        table = open_table(args.workspace, name)
        info = table.version_info()
        rows.append({"name": name, "versions": info.version, "samples": info.n_samples, "classes": len(info.classes), "last message": info.message})
    print_table(pd.DataFrame(rows, columns=["name", "versions", "samples", "classes", "last message"]))


def cmd_import(args: argparse.Namespace) -> None:
    from labelloop.data.ingest import add_images, import_dataset

    with progress_bar("checking images") as progress:
        if args.add:
            version, report = add_images(args.path, args.name, args.workspace, parent=args.parent, layout=args.layout, message=args.message, progress=progress, workers=args.workers)
            print(f"'{args.name}' version {version}: {report.describe()}")
        else:
            _, report = import_dataset(args.path, args.name, args.workspace, layout=args.layout, message=args.message, progress=progress, workers=args.workers)
            print(f"'{args.name}' version 1: {report.describe()}")
    for warning in report.warnings:
        print(f"warning: {warning}")
    for item in report.skipped[: args.show_skipped]:
        print(f"skipped: {item.path}: {item.reason}")
    if len(report.skipped) > args.show_skipped:
        print(f"... and {len(report.skipped) - args.show_skipped} more skipped (see {storage.join(DatasetPaths(args.workspace, args.name).root, 'imports')})")
    for group in report.duplicate_groups[:10]:
        print("duplicates: " + " = ".join(group))


def cmd_history(args: argparse.Namespace) -> None:
    table = open_table(args.workspace, args.name)
    rows = [
        {
            "version": info.version,
            "time (UTC)": info.timestamp.strftime("%Y-%m-%d %H:%M:%S"),
            "samples": info.n_samples,
            "message": info.message,
            "changes": info.describe(),
        }
        for info in table.history()
    ]
    print_table(pd.DataFrame(rows))


def cmd_classes(args: argparse.Namespace) -> None:
    table = open_table(args.workspace, args.name)
    print_table(table.class_counts(args.version).reset_index())


def cmd_diff(args: argparse.Namespace) -> None:
    table = open_table(args.workspace, args.name)
    diff = table.diff(args.a, args.b)
    counts = {k: v for k, v in diff.counts().items() if v}
    print(f"version {args.a} -> {args.b}: " + (", ".join(f"{v} {k.replace('_', ' ')}" for k, v in counts.items()) or "no sample changed"))
    if diff.classes_added or diff.classes_removed:
        print(f"classes added: {diff.classes_added or '-'}; removed: {diff.classes_removed or '-'}")
    flow = diff.label_flow()
    if not flow.empty:
        print("\nlabel flow (rows: old label, columns: new label):")
        print(flow.to_string())
    if args.out:
        diff.samples.to_csv(args.out, index=False)
        print(f"\nper-sample changes written to {args.out}")
    elif args.samples:
        print()
        print_table(diff.samples.head(args.samples))


def cmd_restore(args: argparse.Namespace) -> None:
    table = open_table(args.workspace, args.name)
    parent = args.parent or table.head_version()
    made = table.restore(args.version, parent=parent, message=args.message)
    print(f"'{args.name}' version {made}: restored version {args.version} ({table.version_info(made).describe()}); {made.files_replaced} data file(s) swapped, no data written")


def cmd_apply(args: argparse.Namespace) -> None:
    from labelloop.data.exchange import read_change_file

    table = open_table(args.workspace, args.name)
    changes = read_change_file(args.changes, args.new_class)
    made = table.commit(changes, parent=args.parent, message=args.message)
    print(f"'{args.name}' version {made}: {table.version_info(made).describe()}; wrote {made.files_written} data file(s) ({made.bytes_written / 1024:,.0f} KB)")


def cmd_export(args: argparse.Namespace) -> None:
    from labelloop.data.exchange import default_export_path, export_version

    table = open_table(args.workspace, args.name)
    version = args.version or table.head_version()
    out = args.out or default_export_path(DatasetPaths(args.workspace, args.name), version, args.format)
    path, description = export_version(table, version, args.format, out)
    print(f"exported version {version} of '{args.name}' as {args.format}: {description} -> {path}")


def cmd_thumbnails(args: argparse.Namespace) -> None:
    from labelloop.data.ingest import make_missing_thumbnails

    open_table(args.workspace, args.name)
    with progress_bar("thumbnails") as progress:
        made, problems = make_missing_thumbnails(args.workspace, args.name, args.version, progress=progress)
    print(f"made {made} thumbnail(s) in {DatasetPaths(args.workspace, args.name).thumbs}")
    for problem in problems[:20]:
        print(f"not readable: {problem.path}: {problem.reason}")
    if len(problems) > 20:
        print(f"... and {len(problems) - 20} more")


COMMANDS = ("demo", "app", "list", "import", "history", "classes", "diff", "restore", "apply", "export", "thumbnails")  # what register() adds, known without importing what the commands use


def register(sub, common: argparse.ArgumentParser) -> None:
    """Add this group's commands to the parser."""
    p = sub.add_parser("demo", parents=[common], help="build the Fashion-MNIST demo data set")
    p.add_argument("--name", default=None, help="data set name (default: fashion-demo)")
    p.add_argument("--if-missing", action="store_true", help="do nothing if the workspace already has a data set")
    p.add_argument("--per-class", type=int, default=600, help="images per class (default 600)")
    p.add_argument("--seed", type=int, default=0, help="seed for the choice of images, undefined and flipped labels")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("app", parents=[common], help="start the web app (further --section.option flags go to streamlit run)")
    p.add_argument("--port", type=int, default=int(os.environ.get("LABELLOOP_PORT") or 8501), help="port to serve on (default 8501, or $LABELLOOP_PORT)")
    p.set_defaults(func=cmd_app, passes_unknown=True)

    p = sub.add_parser("list", parents=[common], help="list the data sets in the workspace")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("import", parents=[common], help="import a folder or a CSV/Parquet manifest as a data set")
    p.add_argument("path", help="folder of class sub-folders, flat folder, or manifest (path,label[,split])")
    p.add_argument("--name", required=True, help="name of the data set to create (or to add to, with --add)")
    p.add_argument("--layout", default="auto", choices=["auto", "class-folders", "flat"], help="how to read a folder (default: auto)")
    p.add_argument("--add", action="store_true", help="add the images the data set does not have yet, as a new version")
    p.add_argument("--parent", type=int, help="with --add: the version to add to (default: the latest)")
    p.add_argument("-m", "--message", help="version message (default: describes the import)")
    p.add_argument("--workers", type=int, help="processes checking images (default: one per core)")
    p.add_argument("--show-skipped", type=int, default=20, help="how many skipped files to list (default 20)")
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("history", parents=[common], help="list the versions of a data set")
    p.add_argument("name")
    p.set_defaults(func=cmd_history)

    p = sub.add_parser("classes", parents=[common], help="class counts of a version")
    p.add_argument("name")
    p.add_argument("--version", type=int, help="version (default: the latest)")
    p.set_defaults(func=cmd_classes)

    p = sub.add_parser("diff", parents=[common], help="what changed between two versions")
    p.add_argument("name")
    p.add_argument("a", type=int)
    p.add_argument("b", type=int)
    p.add_argument("--samples", type=int, default=0, help="also list the first N changed samples")
    p.add_argument("--out", help="write every changed sample to this CSV")
    p.set_defaults(func=cmd_diff)

    p = sub.add_parser("restore", parents=[common], help="commit a new version equal to an old one")
    p.add_argument("name")
    p.add_argument("version", type=int)
    p.add_argument("--parent", type=int, help="fail unless this is still the latest version (default: the latest)")
    p.add_argument("-m", "--message", help="version message (default: 'restore version N')")
    p.set_defaults(func=cmd_restore)

    p = sub.add_parser("apply", parents=[common], help="commit a CSV of sample_id,label and/or sample_id,weight as one version")
    p.add_argument("name")
    p.add_argument("changes", help="CSV with sample_id and any of label, weight, split (empty cell = unchanged)")
    p.add_argument("--parent", type=int, required=True, help="the version the changes were made against")
    p.add_argument("-m", "--message", required=True, help="what the changes are and why")
    p.add_argument("--new-class", action="append", default=[], metavar="NAME", help="allow this new class name (repeatable)")
    p.set_defaults(func=cmd_apply)

    p = sub.add_parser("export", parents=[common], help="write a version's labels as CSV, Parquet or an ImageFolder tree")
    p.add_argument("name")
    p.add_argument("--version", type=int, help="version (default: the latest)")
    p.add_argument("--format", required=True, choices=["csv", "parquet", "imagefolder"])
    p.add_argument("--out", help="output file or folder (default: <data set>/exports/<name>-v<N>[.csv|.parquet])")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("thumbnails", parents=[common], help="make the thumbnails this machine lacks (a workspace in S3 opened on another machine)")
    p.add_argument("name")
    p.add_argument("--version", type=int, help="version whose images to cover (default: the latest)")
    p.set_defaults(func=cmd_thumbnails)
