"""Example stream applications on Quix Streams (see README.md). Run one with `examples/run <workflow>`."""

import contextlib
import warnings

# confluent-kafka's registry client imports authlib's httpx integration, which warns on import; the
# warning is about authlib's internals, not these apps. authlib installs an "always" filter for its
# warnings when imported, so it is imported first and the filter put in front of it.
with contextlib.suppress(ImportError):
    import authlib.deprecate  # noqa: F401
warnings.filterwarnings("ignore", message="The httpx module is deprecated")
