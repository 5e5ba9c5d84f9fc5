"""aipaas: the core library of a self-hostable AI platform-as-a-service.

Plain Python that takes data and typed settings and returns values. It never
imports prefect or fastapi (``aipaas.cli`` aside): flows/ and serving/ are the
edges.
"""

import os

# whylogs must send nothing home; set before any whylogs import.
os.environ.setdefault("WHYLOGS_NO_ANALYTICS", "True")

__version__ = "0.1.0"
