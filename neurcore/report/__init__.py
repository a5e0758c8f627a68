"""HTML reports: a dissection's summary and layer pages, the labels' page, and the circuit view.

Pages are static, self-contained files that open from disk; images are PNG files beside them.
"""

from ._circuit import write_circuit_html
from ._dissection import write_report
from ._labels import write_label_report

__all__ = ["write_report", "write_label_report", "write_circuit_html"]
