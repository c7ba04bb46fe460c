"""The input limits every command shares, without importing torch (the CLI's flags read
them before any command runs)."""

# The decompression-bomb limit of every command (--max-image-pixels): Pillow's own hard limit,
# twice its warning threshold, about 13,400 x 13,400 pixels. Lower would refuse images that
# shards built by earlier versions already hold; a 3-channel image this large is ~540 MB.
MAX_PIXELS = 178_956_970
PIXEL_LIMIT_FLAG = "--max-image-pixels"
# A file larger than this is no image we would decode (a 179-megapixel PNG stays far below);
# it is refused before it is read, so a 20 GB sparse file or a device never fills memory.
MAX_FILE_BYTES = 256 * 2**20
FILE_LIMIT_FLAG = "--max-file-mb"

# The input sides every model takes: 75 is the smallest for which every member of the family
# keeps a 1x1 map at its last block; the largest is the side of a square at the pixel limit.
MIN_IMAGE_SIZE = 75
MAX_IMAGE_SIZE = 13_377  # isqrt(MAX_PIXELS)
