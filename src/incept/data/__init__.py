"""Data: TFRecord shards in the original's format, image decoding, distortions, the loader."""
