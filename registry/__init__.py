"""medgate model registry: datasets, runs, model versions, gate decisions, drift events, audit log,
approvals and console users.

Modules: `registry.db` (engine, sessions, migrations), `registry.models` (the tables),
`registry.repository` (every read and write; says which functions commit and which only flush),
`registry.users` (console accounts), `registry.views` (the console's list queries), `registry.errors`. Typical use::

    from registry import db, repository as repo

    db.upgrade_database(url)                      # migrations to head, idempotent
    Session = db.make_session_factory(url)
    with Session() as session:
        repo.promote_version(session, version_id, actor="ci", reason="gate passed")
"""
