"""The review console (`medgate ui`): server-rendered pages over the registry and the runs' reports,
and the approvers' sign-off. `console.app` builds the ASGI application, `console.auth` holds the
accounts' passwords, session cookies and CSRF tokens, `console.pages` the formatting of each page.

A user interface beside `cli/`: it may import flows, services, registry and components.
"""
