"""What a run writes: protected PNGs, the protected dataset and the parquet manifest, atomically."""

from .atomic import write_bytes_atomic
from .manifest import OutputWriter, read_manifest, repair, withdraw
from .records import SCHEMA, ManifestRow, ProtectedImage

__all__ = ["SCHEMA", "ManifestRow", "OutputWriter", "ProtectedImage", "read_manifest", "repair", "withdraw",
           "write_bytes_atomic"]
