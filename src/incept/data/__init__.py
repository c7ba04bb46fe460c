"""Data: TFRecord shards in the original's format, image decoding, distortions, the loader.

`make_loader` is the entry point for training and evaluation; `open_source` lists the
records of a shard folder or an image folder.
"""

from incept.data.loader import ImageLoader, make_loader
from incept.data.sources import Record, Source, open_source

__all__ = ["ImageLoader", "Record", "Source", "make_loader", "open_source"]
