"""What a run writes: protected PNGs, the protected dataset and the parquet manifest, atomically."""

from .atomic import write_bytes_atomic
from .manifest import OutputWriter, finished_uids, read_manifest, remove_orphan_parts
from .records import SCHEMA, ManifestRow, ProtectedImage

__all__ = ["SCHEMA", "ManifestRow", "OutputWriter", "ProtectedImage", "finished_uids", "read_manifest",
           "remove_orphan_parts", "write_bytes_atomic"]
