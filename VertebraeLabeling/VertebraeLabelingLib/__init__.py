"""Slicer-free core of VertebraeLabeling: find and name the vertebrae (C1-S2) of a CT.

Everything here imports without Slicer; the Slicer module, the command line and the
``training`` package all call these functions, so each step has one implementation.

Coordinate convention: every physical coordinate that crosses a function boundary in this
package is in **LPS millimetres** (ITK/SimpleITK/DICOM convention) unless the name says
``ras``. Writers convert where a file format wants something else.
"""

__version__ = "0.1.0"
