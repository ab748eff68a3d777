"""The admin: `editloop serve` (JSON API, pages, images, /metrics) and the CLI views.

Everything it shows is read from the database and the object store at request time; it keeps no
state of its own. `settings` is imported by `loop.settings`, so this package's top imports nothing
heavy: FastAPI, Jinja2 and prometheus_client are imported by `api`, `pages` and `prometheus` only.
"""
