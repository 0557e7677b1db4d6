"""The review console's ASGI application (Starlette): pages rendered on the server, no JavaScript.

Access: once the registry holds a user, every page needs a signed-in session (`console.auth`);
with no user at all, pages are readable without signing in where the console allows it (on a
loopback address only: `medgate ui`), and nothing can be changed. Approving and rejecting need an approver or admin,
a form with the session's CSRF token, and pass `flows.promotion.sign_off_candidate` (the policy,
the registry transaction, the audit rows with the user as actor). The Host/Origin guard of
`services.origin` refuses requests from other sites and rebound DNS names.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from sqlalchemy.orm import Session, sessionmaker
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.templating import Jinja2Templates

from components.config import Params, default_params, load_params
from console import auth, pages
from flows.promotion import SignOffRefused, sign_off_candidate
from registry import repository as repo
from registry.errors import RegistryError
from registry.models import Role
from registry.users import count_users, get_user
from services.origin import OriginGuard

TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"
logger = logging.getLogger("medgate.console")

# The console's pages run no script and load nothing from elsewhere; served reports are inert.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    # same-origin, not no-referrer: under no-referrer a browser posts forms with `Origin: null`, which the guard refuses.
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
REPORT_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; frame-ancestors 'none'; sandbox"


@dataclass(frozen=True)
class Viewer:
    """Who is looking: a signed-in user, or nobody where the registry has no user yet."""

    name: str | None
    role: str
    csrf: str

    @property
    def can_approve(self) -> bool:
        return self.name is not None and self.role in (Role.APPROVER, Role.ADMIN)


class Console:
    """The routes of the console over one workspace's registry and runs."""

    def __init__(self, sessions: sessionmaker[Session], workspace: Path, secret: str, anonymous: bool):
        self.sessions, self.workspace, self.anonymous = sessions, workspace, anonymous
        self.codec = auth.SessionCodec(secret)
        self.templates = Jinja2Templates(directory=str(TEMPLATES_DIR))
        self.templates.env.filters.update(pages.FILTERS)
        self.templates.env.globals.update(stage_of=pages.stage_of, gate_verdict=pages.gate_verdict, quote=quote)

    # -- who is asking ---------------------------------------------------------------------------

    def viewer(self, request: Request) -> tuple[Viewer | None, bool]:
        """The request's viewer (None: not signed in) and whether the registry has users."""
        session = self.codec.loads(request.cookies.get(auth.COOKIE))
        with self.sessions() as db:
            has_users = count_users(db) > 0
            user = get_user(db, session.user) if session is not None and session.user else None
            if user is not None and session is not None and session.fingerprint == auth.fingerprint(user.password_hash):
                return Viewer(user.name, user.role, session.csrf), has_users
        if not has_users and self.anonymous:
            return Viewer(None, Role.VIEWER, session.csrf if session else ""), False
        return None, True

    def params(self) -> Params:
        path = self.workspace / "params.yaml"
        return load_params(path) if path.exists() else default_params()

    # -- responses -------------------------------------------------------------------------------

    def render(self, request: Request, template: str, viewer: Viewer | None, status: int = 200, **context: Any) -> Response:
        response = self.templates.TemplateResponse(request, template, {"viewer": viewer, **context}, status_code=status)
        response.headers.update(PAGE_HEADERS)
        return response

    def problem(self, request: Request, viewer: Viewer | None, status: int, message: str) -> Response:
        return self.render(request, "problem.html", viewer, status, status_code=status, message=message)

    def signed_in(self, respond: Callable[[Request, Viewer, Session], Response]) -> Callable[[Request], Response]:
        """A GET handler: to the sign-in page where users exist and none is signed in, else `respond`."""

        def handler(request: Request) -> Response:
            viewer, _ = self.viewer(request)
            if viewer is None:
                return RedirectResponse(f"/login?next={quote(request.url.path)}", status_code=303)
            with self.sessions() as db:
                return respond(request, viewer, db)

        return handler

    def page(self, build: Callable[[Session, Request], dict[str, Any] | None], template: str) -> Callable[[Request], Response]:
        """A page: `build` gives the template's context (None: 404)."""

        def respond(request: Request, viewer: Viewer, db: Session) -> Response:
            context = build(db, request)
            if context is None:
                return self.problem(request, viewer, 404, f"nothing at {request.url.path}")
            return self.render(request, template, viewer, **context)

        return self.signed_in(respond)

    def served(self, find: Callable[[Session, Request], Path | str | None]) -> Callable[[Request], Response]:
        """A self-contained HTML report: a file the registry names (an HTML file under the workspace's
        runs/ only), or a page `find` renders; inert (no script, no request elsewhere)."""

        def respond(request: Request, viewer: Viewer, db: Session) -> Response:
            found = find(db, request)
            headers = {**PAGE_HEADERS, "Content-Security-Policy": REPORT_CSP}
            if isinstance(found, str):
                return HTMLResponse(found, headers=headers)
            runs = (self.workspace / "runs").resolve()
            if found is None or found.suffix != ".html" or not found.resolve().is_relative_to(runs):
                return self.problem(request, viewer, 404, "no such report in this workspace")
            return FileResponse(found, media_type="text/html", headers=headers)

        return self.signed_in(respond)

    # -- sign-in ---------------------------------------------------------------------------------

    def login_form(self, request: Request, *, status: int = 200, error: str = "") -> Response:
        session = self.codec.loads(request.cookies.get(auth.COOKIE))
        csrf = session.csrf if session is not None else auth.new_csrf()
        response = self.render(request, "login.html", None, status, csrf=csrf, error=error,
                               next=_local(request.query_params.get("next", "/")))
        if session is None:
            self._set_cookie(response, auth.Session(None, csrf))
        return response

    async def login(self, request: Request) -> Response:
        form = await request.form()
        session = self.codec.loads(request.cookies.get(auth.COOKIE))
        if not auth.csrf_matches(session, form.get("csrf")):
            return self.problem(request, None, 403, "refused: the form's CSRF token is missing or wrong; reload the sign-in page")
        name, password = str(form.get("name") or ""), str(form.get("password") or "")
        user_hash = await run_in_threadpool(self._verified_hash, name, password)
        if user_hash is None:
            logger.warning("console: a sign-in failed")  # never the name typed: it may be a password
            return self.login_form(request, status=401, error="wrong user name or password")
        with self.sessions() as db:
            repo.audit_account(db, actor=name, action="sign-in", reason=f"console sign-in from {_client(request)}")
            db.commit()
        response = RedirectResponse(_local(str(form.get("next") or "/")), status_code=303)
        self._set_cookie(response, auth.Session(name, auth.new_csrf(), auth.fingerprint(user_hash)))
        return response

    def _verified_hash(self, name: str, password: str) -> str | None:
        with self.sessions() as db:
            user = get_user(db, name)
            stored = user.password_hash if user is not None else None
        return stored if auth.verify_password(stored, password) else None

    async def logout(self, request: Request) -> Response:
        viewer, form = await self._posted(request)
        if isinstance(form, Response):
            return form
        if viewer is not None and viewer.name is not None:
            with self.sessions() as db:
                repo.audit_account(db, actor=viewer.name, action="sign-out", reason="console sign-out")
                db.commit()
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(auth.COOKIE, path="/")
        return response

    def _set_cookie(self, response: Response, session: auth.Session) -> None:
        response.set_cookie(auth.COOKIE, self.codec.dumps(session), max_age=auth.SESSION_MAX_AGE_S, path="/",
                            httponly=True, samesite="strict")

    async def _posted(self, request: Request) -> tuple[Viewer | None, FormData | Response]:
        """The viewer and the form of a POST, or the refusal: no session, or no matching CSRF token."""
        form = await request.form()
        viewer, _ = await run_in_threadpool(self.viewer, request)
        if viewer is None or not viewer.csrf:
            return viewer, self.problem(request, viewer, 403, "refused: sign in first")
        if not auth.csrf_matches(auth.Session(viewer.name, viewer.csrf), form.get("csrf")):
            return viewer, self.problem(request, viewer, 403, "refused: the form's CSRF token is missing or wrong; reload the page")
        return viewer, form

    # -- sign-off --------------------------------------------------------------------------------

    async def decide(self, request: Request) -> Response:
        viewer, form = await self._posted(request)
        if isinstance(form, Response):
            return form
        assert viewer is not None
        name, number, decision = request.path_params["name"], int(request.path_params["version"]), request.path_params["decision"]
        if decision not in ("approve", "reject"):
            return self.problem(request, viewer, 404, f"nothing to do at {request.url.path}")
        approve = decision == "approve"
        if viewer.name is None:
            return self.problem(request, viewer, 403, "refused: signing off needs a signed-in approver (no anonymous changes)")
        reason = str(form.get("reason") or "").strip()
        if not reason:
            return self.problem(request, viewer, 400, "a sign-off needs a reason")
        try:
            await run_in_threadpool(
                sign_off_candidate, self.sessions, self.params(), name, number, approve=approve, actor=viewer.name, reason=reason
            )
        except SignOffRefused as exc:
            return self.problem(request, viewer, 403, f"refused: {exc}")
        except (RegistryError, ValueError) as exc:
            return self.problem(request, viewer, 409, f"not done: {exc}")
        return RedirectResponse(f"/models/{quote(name)}/{number}", status_code=303)


def _local(target: str) -> str:
    """A redirect target on this server only (no scheme, no other host)."""
    return target if target.startswith("/") and not target.startswith("//") and "\\" not in target else "/"


def _client(request: Request) -> str:
    return request.client.host if request.client is not None else "unknown"


def _filters(request: Request, keys: tuple[str, ...]) -> dict[str, str]:
    return {k: request.query_params.get(k, "") for k in keys}


def _page_number(request: Request) -> int:
    value = request.query_params.get("page", "1")
    return int(value) if value.isdigit() else 1


def _version(request: Request) -> int:
    return int(request.path_params["version"])


def create_app(
    sessions: sessionmaker[Session], workspace: Path, secret: str, allowed_hosts: frozenset[str] | None, *, anonymous: bool = False
) -> Any:
    """The console over `workspace` (its runs' reports) and the registry `sessions` opens, behind the
    Host/Origin guard answering only to `allowed_hosts` (None: no guard). With `anonymous`, a registry
    without users is readable without signing in."""
    c = Console(sessions, workspace, secret, anonymous)
    routes = [
        Route("/", lambda request: RedirectResponse("/runs", status_code=303)),
        Route("/login", c.login_form, methods=["GET"]),
        Route("/login", c.login, methods=["POST"]),
        Route("/logout", c.logout, methods=["POST"]),
        Route("/runs", c.page(lambda db, r: pages.runs_page(
            db, _filters(r, ("status", "trigger", "model", "quality", "gate")), _page_number(r)), "runs.html")),
        Route("/runs/{run_uid}", c.page(lambda db, r: pages.run_page(db, r.path_params["run_uid"]), "run.html")),
        Route("/runs/{run_uid}/{kind:str}", c.served(lambda db, r: _run_file(db, r))),
        Route("/models", c.page(lambda db, r: pages.models_page(db), "models.html")),
        Route("/models/{name}", c.page(lambda db, r: pages.model_page(db, r.path_params["name"]), "model.html")),
        Route("/models/{name}/compare", c.page(lambda db, r: _compare(db, r), "compare.html")),
        Route("/models/{name}/{version:int}", c.page(
            lambda db, r: pages.version_page(db, r.path_params["name"], _version(r)), "version.html")),
        Route("/models/{name}/{version:int}/card", c.served(lambda db, r: _card(c, db, r))),
        Route("/models/{name}/{version:int}/{decision:str}", c.decide, methods=["POST"]),
        Route("/data", c.page(lambda db, r: pages.data_page(db), "data.html")),
        Route("/data/{dataset_id:int}/report", c.served(lambda db, r: pages.dataset_report(db, r.path_params["dataset_id"]))),
        Route("/audit", c.page(lambda db, r: pages.audit_page(db, _filters(r, ("model", "actor", "action")), _page_number(r)), "audit.html")),
    ]
    app = Starlette(routes=routes)
    return OriginGuard(app, allowed_hosts) if allowed_hosts is not None else app


def _run_file(db: Session, request: Request) -> Path | None:
    run = repo.get_run(db, request.path_params["run_uid"])
    kind = request.path_params["kind"]
    return pages.run_file(run.summary or {}, kind) if run is not None and kind in pages.RUN_FILES else None


def _compare(db: Session, request: Request) -> dict[str, Any] | None:
    a, b = request.query_params.get("a", ""), request.query_params.get("b", "")
    if not (a.isdigit() and b.isdigit()):
        return None
    return pages.compare_page(db, request.path_params["name"], int(a), int(b))


def _card(console: Console, db: Session, request: Request) -> str | None:
    """The version's model card, rendered from the registry now (its current stage and decision)."""
    from flows.cards import render_card

    mv = repo.get_version(db, request.path_params["name"], _version(request))
    if mv is None:
        return None
    approval = repo.get_approval(db, mv.id)
    stage = pages.stage_of(mv.stage, approval.status if approval is not None else None)
    return render_card(db, mv, console.params(), stage=stage).html
