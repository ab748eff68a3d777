"""The admin's reads: small keyword-only functions taking a session and returning plain records
(`loop.admin.records`), one module per page family. The API, the pages and the CLI views all
call these."""
