"""`medgate models ...`: model versions in the registry."""

from __future__ import annotations

import getpass
import json
from dataclasses import asdict
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.table import Table

from cli.common import WorkspaceOpt, fmt, console, sessions_for
from flows.settings import get_settings

models_app = typer.Typer(no_args_is_help=True, help="Model versions in the registry.")


@models_app.command("list")
def models_list(
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
    name: Optional[str] = typer.Option(None, "--name", help="Only this model name."),
    workspace: Optional[Path] = WorkspaceOpt,
) -> None:
    """Model versions with stage (awaiting_approval: a candidate waiting for a sign-off), metrics, dataset version and creation time."""
    from registry import repository as repo
    from registry.models import AWAITING_APPROVAL

    with sessions_for(workspace)() as session:
        awaiting = repo.awaiting_approval(session)
        rows = [
            {
                "name": mv.name,
                "version": mv.version,
                "stage": AWAITING_APPROVAL if mv.id in awaiting else mv.stage,
                "metrics": dict(mv.metrics or {}),
                "dataset_version": mv.dataset_version,
                "bento_tag": mv.bento_tag,
                "created_at": mv.created_at.isoformat(),
            }
            for mv in repo.list_versions(session, name)
        ]
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table(title="model versions")
    for column in ("name", "version", "stage", "auc", "accuracy", "dataset", "bento", "created"):
        table.add_column(column)
    for r in rows:
        table.add_row(r["name"], str(r["version"]), r["stage"], fmt(r["metrics"].get("auc")), fmt(r["metrics"].get("accuracy")),
                      r["dataset_version"][:12], r["bento_tag"] or "-", r["created_at"][:19])
    console.print(table)


SERVE_FOLLOWS = "`medgate serve` serves it (a running one switches at its next registry check, or on SIGHUP)"
ActorOpt = typer.Option(None, "--actor", help="Who is acting, for the audit log (default: the login name).")
ReasonOpt = typer.Option(..., "--reason", help="Why, for the audit log.")


def current_actor(actor: Optional[str]) -> str:
    if actor:
        return actor
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return "operator"


def fail(message: str, code: int = 2) -> typer.Exit:
    console.print(f"[red]error:[/] {escape(message)}", soft_wrap=True)
    return typer.Exit(code)


def resolve_version(session, ref: str):
    """The model version `ref` names: `NAME:N` (or `NAME:vN`), or `N` when the registry holds one model name."""
    from registry import repository as repo

    name, _, number = ref.rpartition(":")
    number = number.removeprefix("v")
    if not number.isdigit():
        raise fail(f"{ref!r} is not a model version: write NAME:N, or N when one model name exists")
    name = name or only_model_name(session, f"write NAME:{number}")
    mv = repo.get_version(session, name, int(number))
    if mv is None:
        raise fail(f"{name} has no version {number}")
    return mv


def only_model_name(session, hint: str) -> str:
    """The one model name in the registry; exit 2 with `hint` when there are several, or none."""
    from registry import repository as repo

    names = sorted({mv.name for mv in repo.list_versions(session)})
    if len(names) != 1:
        raise fail("the registry holds no model versions" if not names else f"several model names ({', '.join(names)}): {hint}")
    return names[0]


def _params(workspace: Optional[Path]):
    from components.config import default_params, load_params

    path = get_settings(workspace).workspace / "params.yaml"
    return load_params(path) if path.exists() else default_params()


def _numeric(metrics: dict | None) -> dict:
    return {k: v for k, v in (metrics or {}).items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def print_gate(gate: dict, title: str) -> None:
    table = Table(title=title)
    for column in ("check", "metric", "value", "comparison", "threshold", "verdict", "detail"):
        table.add_column(column)
    for c in gate["checks"]:
        colour = {"pass": "green", "fail": "red"}.get(c["verdict"], "yellow")
        table.add_row(c["kind"], escape(c["metric"]), fmt(c["value"]), c["comparison"], fmt(c["threshold"]),
                      f"[{colour}]{c['verdict']}[/]", escape(c.get("detail") or ""))
    console.print(table)


@models_app.command("show")
def models_show(
    version: str = typer.Argument(..., help="NAME:N, or N when one model name exists."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable facts instead of the card."),
    workspace: Optional[Path] = WorkspaceOpt,
) -> None:
    """A version's model card: intended use, data and its quality, metrics, gate checks, lineage."""
    from components.documents.modelcard import MARKDOWN_FILE, render_model_card
    from flows.cards import card_facts, card_text

    params = _params(workspace)
    with sessions_for(workspace)() as session:
        mv = resolve_version(session, version)
        facts = card_facts(session, mv, card_text(mv.run.params if mv.run else None, params, mv.name))
        run_uid = mv.run.run_uid if mv.run else None
    card_file = get_settings(workspace).runs_dir / str(run_uid) / MARKDOWN_FILE
    if as_json:
        print(json.dumps({**asdict(facts), "use": facts.use.model_dump(mode="json"),
                          "card_file": str(card_file) if card_file.exists() else None}, indent=2, default=str))
        return
    print(render_model_card(facts).markdown)
    where = [str(card_file)] if card_file.exists() else []
    if facts.lineage.get("model_tag"):
        where.append(f"BentoML model {facts.lineage['model_tag']} (in its Bento)")
    print(f"Card files (Markdown and HTML, as written by the run): {'; '.join(where) or 'none written'}")


@models_app.command("compare")
def models_compare(
    a: str = typer.Argument(..., help="NAME:N or N"),
    b: str = typer.Argument(..., help="NAME:N or N"),
    workspace: Optional[Path] = WorkspaceOpt,
) -> None:
    """Two versions side by side: metrics (and B - A), data versions, and their gate checks."""
    from flows.cards import recorded_gate

    with sessions_for(workspace)() as session:
        rows = []
        for ref in (a, b):
            mv = resolve_version(session, ref)
            rows.append({"label": f"{mv.name} v{mv.version}", "mv": mv, "gate": recorded_gate(session, mv) or {"checks": [], "promote": None}})
    left, right = rows
    la, lb = left["mv"], right["mv"]
    table = Table(title=f"{left['label']} vs {right['label']}")
    for column in ("", left["label"], right["label"], "B - A"):
        table.add_column(column)
    for field in ("stage", "dataset_version", "test_data_version", "bento_tag"):
        va, vb = getattr(la, field) or "-", getattr(lb, field) or "-"
        width = 12 if field.endswith("version") else None  # DVC hashes: their first 12 digits
        table.add_row(field.replace("_", " "), va[:width], vb[:width], "" if va == vb else "differs")
    ma, mb = _numeric(la.metrics), _numeric(lb.metrics)
    for key in sorted(set(ma) | set(mb)):
        va, vb = ma.get(key), mb.get(key)
        diff = vb - va if va is not None and vb is not None else None
        table.add_row(key, fmt(va), fmt(vb), f"{diff:+.4f}" if diff is not None else "")
    console.print(table)
    if la.test_data_version != lb.test_data_version:
        console.print("[yellow]note:[/] the two were tested on different test data: metric differences are not like for like "
                      "(the gate re-evaluates the champion on the candidate's test data)")
    checks = Table(title="gate checks (latest recorded decision of each)")
    for column in ("check", left["label"], right["label"]):
        checks.add_column(column)
    keyed = [{(c["kind"], c["metric"], c["comparison"]): c for c in row["gate"]["checks"]} for row in rows]
    for key in sorted(set(keyed[0]) | set(keyed[1])):
        cells = [f"{c['verdict']} {fmt(c['value'])}" if (c := side.get(key)) else "-" for side in keyed]
        checks.add_row(escape(f"{key[0]} {key[1]} {key[2]}"), *cells)
    checks.add_row("decision", *("-" if g.get("promote") is None else "PROMOTE" if g["promote"] else "REFUSED"
                                 for g in (left["gate"], right["gate"])))
    console.print(checks)


@models_app.command("promote")
def models_promote(
    version: str = typer.Argument(..., help="NAME:N, or N when one model name exists."),
    reason: str = ReasonOpt,
    override: bool = typer.Option(False, "--override", help="Promote even if the gate refuses; audited as an override."),
    actor: Optional[str] = ActorOpt,
    workspace: Optional[Path] = WorkspaceOpt,
) -> None:
    """Promote a packaged version by hand: the gate runs against the current production model first."""
    from flows.promotion import describe_check, promote_manually
    from registry.errors import RegistryError

    settings = get_settings(workspace)
    params = _params(workspace)
    sessions = sessions_for(workspace)
    with sessions() as session:
        mv = resolve_version(session, version)
        name, number = mv.name, mv.version
    try:
        result = promote_manually(sessions, settings.workspace, params, name, number, reason=reason,
                                  actor=current_actor(actor), override=override)
    except (RegistryError, ValueError) as exc:
        raise fail(str(exc), 1) from None
    decision = result.outcome.decision
    print_gate(result.outcome.to_dict(), f"gate on {name} v{number}: {'[green]PASS[/]' if decision.promote else '[red]REFUSED[/]'}")
    console.print(f"reason: {escape(decision.reason)}", soft_wrap=True)
    if result.awaiting_approval:
        console.print(f"[yellow]awaiting approval:[/] {name} v{number} passed the gate; the policy requires an approver's "
                      f"sign-off (medgate models approve {name}:{number}, or medgate ui)", soft_wrap=True)
        return
    if not result.promoted:
        console.print(f"[red]refused:[/] {name} v{number} stays {mv.stage}; failing checks:", soft_wrap=True)
        for check in result.failed_checks:
            console.print(f"  - {describe_check(check)}", soft_wrap=True, markup=False)
        console.print("give --override with a --reason to promote anyway (audited as an override)")
        raise typer.Exit(1)
    label = "[yellow]OVERRIDE:[/] " if result.overridden else ""
    console.print(f"{label}{name} v{number} is production (bento {result.bento_tag}); {SERVE_FOLLOWS}", soft_wrap=True)


@models_app.command("rollback")
def models_rollback(
    reason: str = ReasonOpt,
    to: Optional[str] = typer.Option(None, "--to", help="NAME:N or N of an archived version (default: the previous production)."),
    model: Optional[str] = typer.Option(None, "--model", help="Model name (needed when several exist and --to is not given)."),
    actor: Optional[str] = ActorOpt,
    workspace: Optional[Path] = WorkspaceOpt,
) -> None:
    """Return production to an earlier version (the previous production by default); audited."""
    from registry import repository as repo
    from registry.errors import RegistryError

    if not reason.strip():
        raise fail("a rollback needs a reason")
    with sessions_for(workspace)() as session:
        number = None
        if to is not None:
            target = resolve_version(session, to if ":" in to or model is None else f"{model}:{to}")
            name, number = target.name, target.version
        else:
            name = model or only_model_name(session, "give --model")
        previous = repo.get_champion(session, name)
        try:
            restored = repo.rollback(session, name, actor=current_actor(actor), reason=reason, to_version=number)
        except RegistryError as exc:
            raise fail(str(exc), 1) from None
    was = f"v{previous.version}" if previous is not None else "none"
    console.print(f"rolled back {name}: production {was} -> v{restored.version} (bento {restored.bento_tag}); {SERVE_FOLLOWS}",
                  soft_wrap=True)


def _sign_off(version: str, reason: str, actor: Optional[str], workspace: Optional[Path], *, approve: bool) -> None:
    from flows.promotion import SignOffRefused, sign_off_candidate
    from registry.errors import RegistryError

    sessions = sessions_for(workspace)
    with sessions() as session:
        mv = resolve_version(session, version)
        name, number = mv.name, mv.version
    try:
        done = sign_off_candidate(sessions, _params(workspace), name, number, approve=approve, actor=current_actor(actor), reason=reason)
    except SignOffRefused as exc:
        raise fail(f"refused: {exc}", 1) from None
    except (RegistryError, ValueError) as exc:
        raise fail(str(exc), 1) from None
    follows = f"; {SERVE_FOLLOWS}" if approve else ""
    console.print(f"{name} v{number} is {done.stage} (signed off by {escape(current_actor(actor))}){follows}", soft_wrap=True)


CandidateArg = typer.Argument(..., help="NAME:N, or N when one model name exists.")
ApproverOpt = typer.Option(None, "--actor", help="The approver: a console user (default: the login name).")


@models_app.command("approve")
def models_approve(
    version: str = CandidateArg, reason: str = ReasonOpt, actor: Optional[str] = ApproverOpt,
    workspace: Optional[Path] = WorkspaceOpt,
) -> None:
    """Approve a candidate awaiting approval: it is promoted (gate require_approval; docs/gate.md)."""
    _sign_off(version, reason, actor, workspace, approve=True)


@models_app.command("reject")
def models_reject(
    version: str = CandidateArg, reason: str = ReasonOpt, actor: Optional[str] = ApproverOpt,
    workspace: Optional[Path] = WorkspaceOpt,
) -> None:
    """Reject a candidate awaiting approval, with the reason."""
    _sign_off(version, reason, actor, workspace, approve=False)
