"""The object store's key layout: one prefix per kind of object, in one place.

    sources/<sha256>.png                 task source images (ingest)
    edits/<sha256>.png                   edited images (edit workers)
    checkpoints/<version>/...            published checkpoints
    checkpoints/.staging/<version>-<nonce>/...   uploads being verified (never referenced)
    exports/<name>/...                   published dataset exports (`editloop export store:NAME`)
    exports/.staging/<name>-<id>/...     export uploads being verified (never referenced)

Images are content-addressed, so writing one twice is harmless; `editloop gc` deletes what no row
references, under these prefixes only.
"""

SOURCE_PREFIX = "sources"
EDIT_PREFIX = "edits"
CHECKPOINT_PREFIX = "checkpoints"
STAGING_PREFIX = f"{CHECKPOINT_PREFIX}/.staging"
# Written last into a published checkpoint's prefix: paths, sizes and SHA-256 of its files.
CHECKPOINT_MANIFEST = "checkpoint_manifest.json"
EXPORT_PREFIX = "exports"
EXPORT_STAGING_PREFIX = f"{EXPORT_PREFIX}/.staging"
