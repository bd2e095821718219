"""imgbuild's bundled CPU text-to-speech server (installed into app images, not into the host tool).

Modules follow the request path: api_models (request bodies) -> app (FastAPI routes, errors) -> voices
(ref_data layout) -> refcache (encoded references) -> scheduler (bounded queue, one inference thread) ->
engine (interface) -> piper_engine. audio encodes WAV/PCM/FLAC; cpu picks the thread count.
"""

__version__ = "0.1.0"
