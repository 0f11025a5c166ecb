"""What a run writes: protected PNGs, the protected dataset and the parquet manifest, atomically."""

from .atomic import png_bytes, write_bytes_atomic
from .manifest import SCHEMA, OutputWriter, finished_uids, read_manifest, remove_orphan_parts

__all__ = ["SCHEMA", "OutputWriter", "finished_uids", "png_bytes", "read_manifest", "remove_orphan_parts",
           "write_bytes_atomic"]
