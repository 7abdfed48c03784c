"""Static files in production: compressed, with hashed names, ES module imports included."""

from whitenoise.storage import CompressedManifestStaticFilesStorage


class StaticStorage(CompressedManifestStaticFilesStorage):
    # The chat page's modules import each other; rewriting those imports to hashed names keeps
    # a page from mixing old and new modules after a deploy.
    support_js_module_import_aggregation = True
