"""The storefront pixel (issue 17): collector bodies checked (body.py) and mapped to anonymous
browse events (mapping.py). Pure, no I/O; nothing here is trusted for identity."""

from bridge.sources.pixel.mapping import PREFIX, PixelSource, topic_of

__all__ = ["PREFIX", "PixelSource", "topic_of"]
