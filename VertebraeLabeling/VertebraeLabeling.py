"""3D Slicer module: find and name the vertebrae (C1-S2) of a CT and let the user correct them.

The heavy lifting (the network) runs in a separate ``PythonSlicer`` process that calls the
Slicer-free core (``VertebraeLabelingLib``), so Slicer stays responsive and can cancel it. The
result lands in markups point lists, one per spine region because a point list has a single
colour; the nodes stay unlocked so the user can drag, rename or delete points, and the panel
can renumber all points after one correction.

The Logic's MRML-only methods work without Qt (e.g. with PyPI's ``slicer-core``) so they can
be tested outside the Slicer application; the GUI imports are guarded for that reason only.
"""

import contextlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import pathlib
import queue
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from typing import Annotated, Callable, NamedTuple, Optional

import slicer
import vtk

try:  # Inside the Slicer application.
    import qt
    from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
    from slicer.ScriptedLoadableModule import (
        ScriptedLoadableModule,
        ScriptedLoadableModuleLogic,
        ScriptedLoadableModuleTest,
        ScriptedLoadableModuleWidget,
    )
    from slicer.util import VTKObservationMixin

    _HAVE_GUI = True
except ImportError:  # Headless MRML (slicer-core): only the Logic's MRML methods are usable.
    _HAVE_GUI = False

    class ScriptedLoadableModuleLogic:  # type: ignore[no-redef]
        """Stand-in base so the Logic can be instantiated without the Slicer application."""

        def __init__(self, parent=None):
            pass

    # Distinct empty classes (not all `object`) so the Widget's two bases stay distinct.
    class ScriptedLoadableModule:  # type: ignore[no-redef]
        pass

    class ScriptedLoadableModuleWidget:  # type: ignore[no-redef]
        pass

    class ScriptedLoadableModuleTest:  # type: ignore[no-redef]
        pass

    class VTKObservationMixin:  # type: ignore[no-redef]
        pass

    def parameterNodeWrapper(cls):  # type: ignore[no-redef]
        return cls

    def WithinRange(*args):  # type: ignore[no-redef]  # noqa: N802
        return None

    def Choice(*args):  # type: ignore[no-redef]  # noqa: N802
        return None

try:
    from slicer.i18n import tr as _
except ImportError:  # Older Slicer or slicer-core without translations.

    def _(text: str) -> str:
        return text


from VertebraeLabelingLib import corrections
from VertebraeLabelingLib.defaults import DEFAULT_MIRROR, DEFAULT_STRIDE, LOW_CONFIDENCE
from VertebraeLabelingLib.vertebrae import NAME_TO_INDEX, REGION_COLORS, REGIONS, region_of

MODULE_DIR = os.path.dirname(os.path.abspath(__file__))
WORKER_SCRIPT = os.path.join(MODULE_DIR, "Resources", "Scripts", "vertebrae_labeling_worker.py")
# Installed extension: the module's Resources; source tree: the repository's Testing/Data.
SAMPLE_DATA_CANDIDATES = (
    os.path.join(MODULE_DIR, "Resources", "SampleData", "ts_example_ct.nii.gz"),
    os.path.join(MODULE_DIR, "..", "Testing", "Data", "ts_example_ct.nii.gz"),
)
SAMPLE_NAME = "VertebraeLabelingAbdomenCT"

# Node attributes and references that tie the per-region point lists to the output node.
ATTR_ROLE = "VertebraeLabeling.Role"  # "output" on the anchor, "region" on the others
ATTR_REGION = "VertebraeLabeling.Region"
ATTR_FINGERPRINT = "VertebraeLabeling.Fingerprint"
# The CT a point set was made from: a node reference, which scene import remaps when node IDs clash
# (an attribute holding the ID would then name another scene's node). Older scenes stored the ID as an
# attribute of the same name; it is removed when the set is rewritten and never read.
REF_SOURCE_VOLUME = "VertebraeLabeling.SourceVolume"
LEGACY_ATTR_SOURCE_VOLUME = "VertebraeLabeling.SourceVolume"
REF_REGION_PREFIX = "VertebraeLabeling.RegionNode."
# The selection node (Slicer's "active place list", where the toolbar's place mode adds points).
SELECTION_NODE_ID = "vtkMRMLSelectionNodeSingleton"
# How a name was reached, for names the user gave or that follow from one (see renamePoint).
BASIS_BY_HAND = "named by hand"
BASIS_RENUMBERED = "renumbered from {name}"
# Where "Save as training case" last saved (application settings, so it survives a restart).
SETTINGS_TRAINING_FOLDER = "VertebraeLabeling/TrainingCaseFolder"

_CONFIDENCE_RE = re.compile(r"confidence\s*[=:]?\s*([0-9]*\.?[0-9]+)", re.IGNORECASE)
# "confidence 0.93; last rib pair": what the module writes into each point's description.
_DESCRIPTION_RE = re.compile(r"^\s*confidence\s*[=:]?\s*([0-9]*\.?[0-9]+)\s*(?:;\s*(.*))?$",
                             re.IGNORECASE | re.DOTALL)
_PROGRESS_RE = re.compile(r"^PROGRESS\s+([0-9]*\.?[0-9]+)\s*(.*)$")

DEVICE_CHOICES = ("auto", "cpu", "cuda")

_IS_WINDOWS = os.name == "nt"
# Windows process creation flags (subprocess defines them only on Windows).
_CREATE_NO_WINDOW = 0x08000000
_CREATE_NEW_PROCESS_GROUP = 0x00000200


#
# Module
#


class VertebraeLabeling(ScriptedLoadableModule):
    """Module description shown in Slicer's module list and help panel."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("Vertebrae Labeling")
        self.parent.categories = [_("Spine")]
        # PyTorch (the PyTorchUtils module) is a dependency of the extension, not of this module:
        # declaring it here would stop the module loading at all, and the panel could not show
        # the user how to install it.
        self.parent.dependencies = []
        self.parent.contributors = ["VertebraeLabeling contributors"]
        self.parent.helpText = _(
            "Finds the vertebrae C1-S2 in a CT and places one named point at each one's centre, "
            "coloured by region. Drag, rename or delete points; after renaming one point, "
            "'Renumber from this point' relabels all others along the spine. The levels are counted "
            "from the ribs, the sacrum and C2; the 'How named' column says how each name was reached. "
            "A research tool, not a medical device: check the thoracic names in particular. Implements "
            "Qin et al., vertebrae labeling by integral regression. Model card: "
            "https://github.com/VertebraeLabeling/SlicerVertebraeLabeling/blob/main/MODEL_CARD.md"
        )
        self.parent.acknowledgementText = _(
            "The sample CT and its reference labels come from the TotalSegmentator project "
            "(Apache-2.0)."
        )
        slicer.app.connect("startupCompleted()", registerSampleData)


def registerSampleData() -> None:
    """Offer the bundled abdomen CT in the Sample Data module so a new user can try at once."""
    import SampleData

    sampleFile = next((p for p in SAMPLE_DATA_CANDIDATES if os.path.exists(p)), None)
    if sampleFile is None:
        logging.warning(f"VertebraeLabeling sample data is missing: {SAMPLE_DATA_CANDIDATES[0]}")
        return
    iconPath = os.path.join(MODULE_DIR, "Resources", "Icons", "VertebraeLabeling.png")
    SampleData.SampleDataLogic.registerCustomSampleDataSource(
        category="Vertebrae Labeling",
        sampleName=SAMPLE_NAME,
        thumbnailFileName=iconPath,
        # The file ships with the extension; a file:// URI lets SampleData "download" it into its
        # cache like any remote sample, without network access.
        uris=pathlib.Path(os.path.abspath(sampleFile)).as_uri(),
        # The name of the copy in Slicer's download cache, which all modules share and which
        # is reused by name: keep it specific to this module.
        fileNames=f"{SAMPLE_NAME}.nii.gz",
        nodeNames="AbdomenCT",
        # With a checksum, SampleData compares the cached copy with the file this version of the
        # extension ships and copies it again when they differ; without one, a cached copy from an
        # earlier version would be used forever.
        checksums=sampleDataChecksum(sampleFile),
    )


def sampleDataChecksum(path: str) -> str:
    """``"SHA256:<hex digest>"`` of a file, the form SampleData's ``checksums`` take."""
    from VertebraeLabelingLib.checksums import sha256_of

    return f"SHA256:{sha256_of(path)}"


def torchStatus() -> tuple[bool, str]:
    """``(installed, version)`` of PyTorch in this Python, without importing it.

    Importing torch in Slicer's own process freezes the panel for seconds and, with a broken install
    (e.g. Windows' ``OSError: [WinError 126] ... fbgemm.dll``), raises errors other than
    ``ModuleNotFoundError``. The worker process imports it and reports such errors in words.
    """
    try:
        if importlib.util.find_spec("torch") is None:
            return False, ""
    except Exception:  # a damaged install can make even the lookup fail: let the worker say why
        return True, ""
    try:
        return True, importlib.metadata.version("torch")
    except Exception:  # found on the path without package metadata (e.g. a source checkout)
        return True, ""


#
# Parameter node
#


@parameterNodeWrapper
class VertebraeLabelingParameterNode:
    """Parameters of the panel, saved with the scene.

    inputVolume - the CT to label.
    outputMarkups - point list that receives the labels (None = create a new one on Apply).
    device - where the network runs: auto (GPU when available), cpu or cuda.
    modelPath - weights file; empty = the model bundled with the extension.
    confidenceThreshold - points below it are highlighted for review.
    blockStride - cranio-caudal step between network blocks (2 mm voxels); smaller = slower.
    mirrorBlocks - also run each block mirrored left-right, as a second vote (twice the network time).
    """

    inputVolume: slicer.vtkMRMLScalarVolumeNode
    outputMarkups: slicer.vtkMRMLMarkupsFiducialNode
    device: Annotated[str, Choice(list(DEVICE_CHOICES))] = "auto"
    modelPath: str = ""
    confidenceThreshold: Annotated[float, WithinRange(0.0, 1.0)] = LOW_CONFIDENCE
    blockStride: Annotated[int, WithinRange(8, 104)] = DEFAULT_STRIDE
    mirrorBlocks: bool = DEFAULT_MIRROR


#
# Subprocess handling (no Qt: the widget polls it with a QTimer, tests poll it in a loop)
#


class LabelingJob:
    """One run of the worker script in a child process, with progress, log and cancel.

    A reader thread moves the child's stdout lines into a queue; :meth:`poll` (called from the
    GUI thread) turns them into progress/log callbacks, so no Qt object is touched off-thread.
    """

    #: Seconds to wait for a cooperative stop after Cancel before killing the process tree.
    KILL_AFTER_S = 3.0

    def __init__(self, command: list[str], tempDir: str, resultPath: str, cancelFile: str,
                 env: Optional[dict] = None) -> None:
        self.command = command
        self.tempDir = tempDir
        self.resultPath = resultPath
        self.cancelFile = cancelFile
        self.env = env
        self.proc: Optional[subprocess.Popen] = None
        self.returnCode: Optional[int] = None
        self.progress = 0.0
        self.progressMessage = ""
        self.errorMessage = ""
        self.logLines: list[str] = []
        self.cancelRequested = False
        self.onProgress: Optional[Callable[[float, str], None]] = None
        self.onLog: Optional[Callable[[str], None]] = None
        self._queue: queue.Queue = queue.Queue()
        self._killDeadline: Optional[float] = None
        self._killed = False
        self._readerDone = threading.Event()

    def start(self) -> None:
        """Launch the child process and the thread that reads its output."""
        kwargs = {}
        if _IS_WINDOWS:
            # No console window, and a process group so the whole tree can be killed.
            kwargs["creationflags"] = _CREATE_NO_WINDOW | _CREATE_NEW_PROCESS_GROUP
        else:
            # PythonSlicer is a launcher that starts the real interpreter as its child: a new
            # session lets Cancel kill both with one killpg.
            kwargs["start_new_session"] = True
        self.proc = subprocess.Popen(
            self.command, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            universal_newlines=True, encoding="utf-8", errors="replace", **kwargs,
        )
        threading.Thread(target=self._readOutput, daemon=True).start()

    def _readOutput(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            self._queue.put(line.rstrip("\r\n"))
        self.proc.wait()
        self._readerDone.set()

    def poll(self) -> bool:
        """Handle the output received so far; return True while the job is still running."""
        while True:
            try:
                line = self._queue.get_nowait()
            except queue.Empty:
                break
            self._handleLine(line)
        if self.cancelRequested and self._killDeadline is not None and time.monotonic() > self._killDeadline:
            self.kill()
        if self._readerDone.is_set() and self._queue.empty():
            if self.returnCode is None and self.proc is not None:
                self.returnCode = self.proc.returncode
            return False
        return True

    def _handleLine(self, line: str) -> None:
        progress = parseProgressLine(line)
        if progress is not None:
            self.progress, self.progressMessage = progress
            if self.onProgress:
                self.onProgress(*progress)
            return
        if line.startswith("ERROR "):
            self.errorMessage = line[len("ERROR "):].strip()
        self.logLines.append(line)
        if self.onLog:
            self.onLog(line)

    def wait(self, timeout: Optional[float] = None, interval: float = 0.05) -> int:
        """Block until the job ends (scripting and tests); returns the exit code."""
        t0 = time.monotonic()
        while self.poll():
            if timeout is not None and time.monotonic() - t0 > timeout:
                self.kill()
                raise TimeoutError(f"labeling did not finish within {timeout} s")
            time.sleep(interval)
        return int(self.returnCode if self.returnCode is not None else -1)

    def cancel(self) -> None:
        """Ask the worker to stop; it is killed if it has not stopped after KILL_AFTER_S."""
        self.cancelRequested = True
        try:
            with open(self.cancelFile, "w") as f:
                f.write("cancel")
        except OSError:
            self.kill()
        self._killDeadline = time.monotonic() + self.KILL_AFTER_S

    def kill(self) -> None:
        """Kill the child and its children (the PythonSlicer launcher starts one); once per job."""
        if self.proc is None or self.proc.poll() is not None or self._killed:
            return
        self._killed = True
        try:
            if _IS_WINDOWS:
                # taskkill is a console program: without CREATE_NO_WINDOW each call flashes a console.
                done = subprocess.run(["taskkill", "/F", "/T", "/PID", str(self.proc.pid)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False,
                                      creationflags=_CREATE_NO_WINDOW)
                if done.returncode != 0:
                    self.proc.kill()  # at least the direct child
            else:
                import signal

                os.killpg(os.getpgid(self.proc.pid), signal.SIGKILL)
        except (OSError, ProcessLookupError):
            self.proc.kill()

    @property
    def succeeded(self) -> bool:
        return self.returnCode == 0 and os.path.exists(self.resultPath)

    @property
    def cancelled(self) -> bool:
        return self.cancelRequested and self.returnCode != 0

    def cleanup(self) -> None:
        """Delete the temporary folder (input copy, result, cancel file)."""
        shutil.rmtree(self.tempDir, ignore_errors=True)


def parseProgressLine(line: str) -> Optional[tuple[float, str]]:
    """``"PROGRESS 0.42 block 3/7"`` -> ``(0.42, "block 3/7")``; anything else -> None."""
    match = _PROGRESS_RE.match(line.strip())
    if not match:
        return None
    return min(max(float(match.group(1)), 0.0), 1.0), match.group(2).strip()


class MarkupPoint(NamedTuple):
    """One labeled point as the panel sees it, wherever (which region node) it lives."""

    node: object  # vtkMRMLMarkupsFiducialNode
    index: int
    label: str
    positionRas: tuple[float, float, float]  # in the node's own (untransformed) coordinates
    confidence: Optional[float]
    basis: str = ""  # how the name was reached ("last rib pair", "network only", "named by hand"...)


#
# Logic
#


class VertebraeLabelingLogic(ScriptedLoadableModuleLogic):
    """Runs the labeling and keeps its result in markups nodes; usable without the widget."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        #: Python used for the worker; Slicer's PythonSlicer when inside Slicer.
        self.pythonExecutable = shutil.which("PythonSlicer") or sys.executable

    def getParameterNode(self):
        return VertebraeLabelingParameterNode(super().getParameterNode())

    @staticmethod
    def _scene():
        return slicer.mrmlScene

    # ---- running ---------------------------------------------------------------------------

    def writeVolume(self, volumeNode, path: str, compress: bool = False) -> None:
        """Write a volume node with Slicer's own writer (so the child sees exactly its geometry).

        Uncompressed by default: faster, and the worker's copy is deleted right after the run.
        """
        storageNode = slicer.vtkMRMLVolumeArchetypeStorageNode()
        storageNode.SetFileName(path)
        storageNode.SetUseCompression(1 if compress else 0)
        if not storageNode.WriteData(volumeNode):
            raise RuntimeError(f"Could not write the volume to {path}")

    def buildCommand(self, inputPath: str, resultPath: str, cancelFile: str, device: str = "auto",
                     modelPath: str = "", stride: int = 0, mirror: bool = DEFAULT_MIRROR) -> list[str]:
        """Command line of the worker process."""
        if device not in DEVICE_CHOICES:
            raise ValueError(f"device must be one of {DEVICE_CHOICES}, not {device!r}")
        command = [self.pythonExecutable, WORKER_SCRIPT, "--lib-dir", MODULE_DIR, "--input", inputPath,
                   "--output", resultPath, "--cancel-file", cancelFile, "--device", device]
        if modelPath:
            command += ["--model", modelPath]
        if stride:
            command += ["--stride", str(int(stride))]
        if not mirror:
            command += ["--no-mirror"]
        return command

    def startLabeling(self, volumeNode, device: str = "auto", modelPath: str = "", stride: int = 0,
                      command: Optional[list[str]] = None, mirror: bool = DEFAULT_MIRROR) -> LabelingJob:
        """Write the volume to a temporary folder and start the worker on it (returns at once).

        ``command`` replaces ``[python, worker script]`` at the head of the command line (tests
        run a stand-in worker with the real arguments this way).
        """
        if volumeNode is None or volumeNode.GetImageData() is None:
            raise ValueError(_("Select a CT volume first."))
        if modelPath and not os.path.isfile(modelPath):
            raise ValueError(_("The model file does not exist: {path}").format(path=modelPath))
        tempDir = tempfile.mkdtemp(prefix="VertebraeLabeling-")
        inputPath = os.path.join(tempDir, "input.nrrd")
        resultPath = os.path.join(tempDir, "result.json")
        cancelFile = os.path.join(tempDir, "cancel")
        self.writeVolume(volumeNode, inputPath)
        fullCommand = self.buildCommand(inputPath, resultPath, cancelFile, device, modelPath, stride, mirror)
        if command is not None:
            fullCommand = list(command) + fullCommand[2:]
        env = None
        if _HAVE_GUI:
            # Like slicer.util.launchConsoleProcess: start from the environment Slicer was started
            # in, so the PythonSlicer launcher sets up its own paths cleanly.
            env = slicer.util.startupEnvironment()
        job = LabelingJob(fullCommand, tempDir, resultPath, cancelFile, env)
        job.start()
        return job

    @staticmethod
    def readResultFile(path: str) -> dict:
        """Read and check the worker's result JSON."""
        with open(path, encoding="utf-8") as f:
            result = json.load(f)
        if result.get("format") != "vertebrae-labeling-slicer-result" or result.get("coordinateSystem") != "LPS":
            raise ValueError(f"{path} is not a VertebraeLabeling result file")
        for v in result.get("vertebrae", []):
            if len(v.get("position", [])) != 3 or not isinstance(v.get("name"), str):
                raise ValueError(f"malformed vertebra entry in {path}: {v!r}")
        return result

    def process(self, volumeNode, outputNode=None, device: str = "auto", modelPath: str = "", stride: int = 0,
                overwriteEdited: bool = False, timeout: Optional[float] = None, mirror: bool = DEFAULT_MIRROR):
        """Label ``volumeNode`` and wait for the result (for scripts and tests; the GUI does not block).

        Returns the output point list (created when ``outputNode`` is None).
        Raises:
            ValueError: the output node holds user edits and ``overwriteEdited`` is False.
            RuntimeError: the worker failed; the message is the worker's.
        """
        if outputNode is not None and self.isEdited(outputNode) and not overwriteEdited:
            raise ValueError(_("The point list has been edited; set overwriteEdited to replace it."))
        job = self.startLabeling(volumeNode, device, modelPath, stride, mirror=mirror)
        try:
            job.wait(timeout)
            return self.finishLabeling(job, volumeNode, outputNode)
        finally:
            job.cleanup()

    def finishLabeling(self, job: LabelingJob, volumeNode, outputNode=None):
        """Turn a finished job into points; returns the output node.

        The CT must still be in the scene (a run outlives a scene close or a deleted volume; its points
        would otherwise land in a scene that has nothing to do with them). An output list deleted
        during the run is replaced by a new one.
        """
        if job.cancelled:
            raise RuntimeError(_("Labeling was cancelled."))
        if not job.succeeded:
            detail = job.errorMessage or "\n".join(job.logLines[-20:])
            raise RuntimeError(_("Labeling failed: {detail}").format(detail=detail))
        if not self.isInScene(volumeNode):
            raise RuntimeError(_("The CT was removed from the scene while it was being labeled; "
                                 "no points were placed."))
        result = self.readResultFile(job.resultPath)
        if outputNode is not None and not self.isInScene(outputNode):
            outputNode = None
        if outputNode is None:
            outputNode = self.createOutputNode(volumeNode)
        self.setResult(outputNode, volumeNode, result)
        return outputNode

    # ---- result -> markups -----------------------------------------------------------------

    def isInScene(self, node) -> bool:
        """Whether ``node`` is (still) a node of the current scene."""
        return node is not None and bool(self._scene().IsNodePresent(node))

    @contextlib.contextmanager
    def keepActivePlaceList(self):
        """Leave the user's active place list (where the toolbar's "place point" adds) as it was.

        Slicer's markups logic makes every markups node added to the scene the active one; without
        this, after a run "place point" would add to whichever region list was created last.
        """
        selection = self._scene().GetNodeByID(SELECTION_NODE_ID)
        if selection is None:
            yield
            return
        placeClass, placeId = selection.GetActivePlaceNodeClassName(), selection.GetActivePlaceNodeID()
        try:
            yield
        finally:
            if selection.GetActivePlaceNodeClassName() != placeClass and placeClass:
                selection.SetReferenceActivePlaceNodeClassName(placeClass)
            if selection.GetActivePlaceNodeID() != placeId:
                selection.SetReferenceActivePlaceNodeID(placeId)

    def createOutputNode(self, volumeNode=None):
        """A new, empty output point list named after the CT."""
        name = f"{volumeNode.GetName()} vertebrae" if volumeNode is not None else "Vertebrae"
        with self.keepActivePlaceList():
            node = self._scene().AddNewNodeByClass("vtkMRMLMarkupsFiducialNode",
                                                   self._scene().GenerateUniqueName(name))
        node.CreateDefaultDisplayNodes()
        return node

    @staticmethod
    def sourceVolume(outputNode):
        """The CT the point set was made from (None when unknown or deleted)."""
        return outputNode.GetNodeReference(REF_SOURCE_VOLUME) if outputNode is not None else None

    def regionListIDs(self) -> list[str]:
        """IDs of all per-region point lists in the scene: they belong to an output set and are not
        outputs themselves (the output selector hides them)."""
        ids = []
        for i in range(self._scene().GetNumberOfNodesByClass("vtkMRMLMarkupsFiducialNode")):
            node = self._scene().GetNthNodeByClass(i, "vtkMRMLMarkupsFiducialNode")
            if node.GetAttribute(ATTR_ROLE) == "region":
                ids.append(node.GetID())
        return ids

    def setResult(self, outputNode, volumeNode, result: dict) -> None:
        """Replace the points of ``outputNode`` (and its region lists) by a worker result.

        The worker reports LPS millimetres in the CT file's frame, which is the volume node's
        own frame (the storage node ignores parent transforms), so points are written in that
        frame and the point lists are put under the volume's transform.
        """
        entries = []
        for v in result.get("vertebrae", []):
            x, y, z = (float(c) for c in v["position"])
            entries.append((v["name"], (-x, -y, z), float(v.get("confidence", float("nan"))),
                            str(v.get("basis") or "")))
        transformId = volumeNode.GetTransformNodeID() if volumeNode is not None else None
        if volumeNode is not None:
            outputNode.SetNodeReferenceID(REF_SOURCE_VOLUME, volumeNode.GetID())
        outputNode.RemoveAttribute(LEGACY_ATTR_SOURCE_VOLUME)
        self.writePoints(outputNode, entries, transformId=transformId)
        self.markAsUnedited(outputNode)
        for message in result.get("messages", []):
            logging.warning(f"VertebraeLabeling: {message}")

    def regionNodes(self, outputNode, create=()) -> dict:
        """``{region: point list}`` for the output node; the output node itself is one of them.

        A point list has one colour, so each region gets its own list; the output node (the one
        the user picked) keeps the region it was first given, the others are created next to it
        and found again through node references. Lists for the regions in ``create`` are made
        when missing, so a lumbar-only CT does not get empty cervical/thoracic lists.
        """
        nodes = {}
        ownRegion = outputNode.GetAttribute(ATTR_REGION)
        if ownRegion:
            nodes[ownRegion] = outputNode
        for region in REGIONS:
            if region == ownRegion:
                continue
            node = outputNode.GetNodeReference(REF_REGION_PREFIX + region)
            if node is None and region in create:
                with self.keepActivePlaceList():
                    node = self._scene().AddNewNodeByClass(
                        "vtkMRMLMarkupsFiducialNode",
                        self._scene().GenerateUniqueName(f"{outputNode.GetName()} {region}"))
                node.CreateDefaultDisplayNodes()
                node.SetAttribute(ATTR_ROLE, "region")
                node.SetAttribute(ATTR_REGION, region)
                outputNode.SetNodeReferenceID(REF_REGION_PREFIX + region, node.GetID())
                self._placeNextTo(node, outputNode)
            if node is not None:
                nodes[region] = node
        return nodes

    def _placeNextTo(self, node, outputNode) -> None:
        """Show region lists under the output node in the Data module, so they read as one set."""
        shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(self._scene())
        if shNode is None:
            return
        parent = shNode.GetItemByDataNode(outputNode)
        item = shNode.GetItemByDataNode(node)
        if parent and item:
            shNode.SetItemParent(item, parent)

    def allNodes(self, outputNode) -> list:
        """The output node followed by its region lists (each once)."""
        nodes = [outputNode]
        for node in self.regionNodes(outputNode).values():
            if node not in nodes:
                nodes.append(node)
        return nodes

    def points(self, outputNode) -> list[MarkupPoint]:
        """All points of the set, in cranio-caudal order."""
        pts = []
        for node in self.allNodes(outputNode):
            for i in range(node.GetNumberOfControlPoints()):
                pos = [0.0, 0.0, 0.0]
                node.GetNthControlPointPosition(i, pos)
                confidence, basis = parseDescription(node.GetNthControlPointDescription(i))
                pts.append(MarkupPoint(node, i, node.GetNthControlPointLabel(i), tuple(pos), confidence, basis))
        order = corrections.order_along_spine([p.positionRas for p in pts]) if pts else []
        return [pts[i] for i in order]

    def writePoints(self, outputNode, entries, transformId: Optional[str] = None) -> None:
        """Replace all points of the set by ``entries`` = [(label, ras, confidence or None[, basis])].

        Each point goes to the list of its label's region; names that are not vertebrae (e.g.
        "?" after renumbering past S2) stay in the output node so they are never lost. The point's
        description holds its confidence and how it was named ("confidence 0.93; last rib pair").
        """
        if not outputNode.GetAttribute(ATTR_REGION):
            counts = {r: sum(1 for e in entries if _regionOrNone(e[0]) == r) for r in REGIONS}
            outputNode.SetAttribute(ATTR_ROLE, "output")
            outputNode.SetAttribute(ATTR_REGION, max(REGIONS, key=lambda r: counts[r]))
        neededRegions = {_regionOrNone(e[0]) for e in entries} - {None}
        nodes = self.regionNodes(outputNode, create=neededRegions)
        outputRegion = outputNode.GetAttribute(ATTR_REGION)
        if transformId is None:
            transformId = outputNode.GetTransformNodeID()
        wasModifying = {}
        for node in self.allNodes(outputNode):
            wasModifying[node] = node.StartModify()
            node.RemoveAllControlPoints()
            node.SetAndObserveTransformNodeID(transformId)
        for entry in entries:
            label, ras, confidence = entry[:3]
            basis = entry[3] if len(entry) > 3 else ""
            region = _regionOrNone(label)
            node = nodes.get(region, outputNode) if region else outputNode
            index = node.AddControlPoint(float(ras[0]), float(ras[1]), float(ras[2]), label)
            node.SetNthControlPointDescription(index, formatDescription(confidence, basis))
            # Unlocked: the user must be able to drag every point.
            node.SetNthControlPointLocked(index, False)
        for node in self.allNodes(outputNode):
            region = node.GetAttribute(ATTR_REGION) if node is not outputNode else outputRegion
            self._styleNode(node, region)
            node.SetLocked(False)
            node.EndModify(wasModifying[node])

    @staticmethod
    def _styleNode(node, region: Optional[str]) -> None:
        display = node.GetDisplayNode()
        if display is None:
            node.CreateDefaultDisplayNodes()
            display = node.GetDisplayNode()
        if display is None or region not in REGION_COLORS:
            return
        color = REGION_COLORS[region]
        # Slicer draws points in SelectedColor while they are selected (the default), so both.
        display.SetSelectedColor(*color)
        display.SetColor(*color)
        display.SetPointLabelsVisibility(True)

    # ---- edits -----------------------------------------------------------------------------

    def fingerprint(self, outputNode) -> str:
        pts = self.points(outputNode)
        return corrections.labels_fingerprint([p.label for p in pts], [p.positionRas for p in pts])

    def markAsUnedited(self, outputNode) -> None:
        """Remember the current points as "what the module wrote"."""
        outputNode.SetAttribute(ATTR_FINGERPRINT, self.fingerprint(outputNode))

    def isEdited(self, outputNode) -> bool:
        """Whether the set holds anything other than what the module last wrote into it.

        A list the module never wrote counts as edited when it has points: they are the
        user's work either way.
        """
        if outputNode is None:
            return False
        stored = outputNode.GetAttribute(ATTR_FINGERPRINT)
        if not stored:
            return any(n.GetNumberOfControlPoints() > 0 for n in self.allNodes(outputNode))
        return stored != self.fingerprint(outputNode)

    def renamePoint(self, outputNode, point: MarkupPoint, newName: str, renumber: bool = False) -> None:
        """Rename one point; with ``renumber`` relabel all others consistently along the spine.

        Raises ValueError for a name that is not a vertebra (when renumbering, or when the
        name is not even "?", so typos are caught).
        """
        pts = self.points(outputNode)
        try:
            index = next(i for i, p in enumerate(pts) if p.node is point.node and p.index == point.index)
        except StopIteration:
            raise ValueError("the point is not in this point list") from None
        name = corrections.normalize_name(newName)
        if renumber:
            labels = corrections.renumber_points([p.label for p in pts], [p.positionRas for p in pts], index, newName)
        else:
            if name is None and newName.strip() != corrections.UNNAMED_LABEL:
                raise ValueError(f"{newName!r} is not a vertebra name (C1..C7, T1..T12, L1..L5, S1, S2)")
            labels = [p.label for p in pts]
            labels[index] = name or corrections.UNNAMED_LABEL
        # A name the user gave (or that follows from one) is no longer the network's: say so.
        bases = []
        for i, (label, p) in enumerate(zip(labels, pts)):
            if i == index and label != p.label:
                bases.append(BASIS_BY_HAND)
            elif label != p.label:
                bases.append(BASIS_RENUMBERED.format(name=labels[index]))
            else:
                bases.append(p.basis)
        self.writePoints(outputNode, [(lab, p.positionRas, p.confidence, basis)
                                      for lab, p, basis in zip(labels, pts, bases)])

    # ---- export ----------------------------------------------------------------------------

    def _labelingResult(self, outputNode):
        """The set as a result object for the core's writers (LPS, in the CT's frame).

        The writers only read ``.vertebrae[i].name/.position_lps/.confidence``; building a plain
        object here (not the core's ``LabelingResult``) keeps export free of the torch import.
        """
        import types

        import numpy as np

        vertebrae = []
        for p in self.points(outputNode):
            if p.label not in NAME_TO_INDEX:
                continue  # "?" has no place in any output format
            x, y, z = p.positionRas
            conf = p.confidence if p.confidence is not None else float("nan")
            vertebrae.append(types.SimpleNamespace(name=p.label, position_lps=np.array([-x, -y, z]), confidence=conf,
                                                   basis=p.basis))
        return types.SimpleNamespace(vertebrae=vertebrae)

    def exportMarkupsJson(self, outputNode, path: str) -> None:
        """All points of the set in one Slicer ``.mrk.json`` (written by Slicer's own writer).

        The merged list lives in a private scene: added to the user's scene, Slicer's markups logic
        would give it a display node (left behind by RemoveNode) and make it the active place list.
        """
        scene = slicer.vtkMRMLScene()
        merged = slicer.vtkMRMLMarkupsFiducialNode()
        merged.SetName(outputNode.GetName())
        scene.AddNode(merged)
        storage = slicer.vtkMRMLMarkupsJsonStorageNode()
        scene.AddNode(storage)
        try:
            for p in self.points(outputNode):
                i = merged.AddControlPoint(*p.positionRas, p.label)
                merged.SetNthControlPointDescription(i, formatDescription(p.confidence, p.basis))
            storage.SetFileName(path)
            if not storage.WriteData(merged):
                raise RuntimeError(f"Could not write {path}")
        finally:
            scene.Clear(1)

    def exportVerseJson(self, outputNode, volumeNode, path: str) -> None:
        """VerSe ``_ctd.json`` via the core's writer (needs the CT for voxel coordinates)."""
        from VertebraeLabelingLib import outputs

        outputs.write_verse_json(self._labelingResult(outputNode), path, self._referenceImage(volumeNode))

    def exportCsv(self, outputNode, path: str) -> None:
        """CSV via the core's writer."""
        from VertebraeLabelingLib import outputs

        outputs.write_csv(self._labelingResult(outputNode), path)

    # ---- training cases --------------------------------------------------------------------

    def trainingCasePoints(self, outputNode, volumeNode) -> tuple[list, list[str]]:
        """``([(label, LPS mm, how it was named)], [points left out])`` of the set, in the CT file's frame.

        The CT is saved by its storage node, which ignores the volume's parent transform; each point is
        taken in world coordinates and brought into the volume's own frame, so the points match the
        saved CT whichever transforms the point lists and the volume are under.
        """
        worldToVolume = vtk.vtkGeneralTransform()
        slicer.vtkMRMLTransformNode.GetTransformBetweenNodes(None, volumeNode.GetParentTransformNode(), worldToVolume)
        entries, skipped = [], []
        for p in self.points(outputNode):
            if p.node.GetNthControlPointPositionStatus(p.index) != slicer.vtkMRMLMarkupsNode.PositionDefined:
                skipped.append(f"'{p.label}': position not set")
                continue
            world = [0.0, 0.0, 0.0]
            p.node.GetNthControlPointPositionWorld(p.index, world)
            x, y, z = worldToVolume.TransformPoint(world)
            entries.append((p.label, (-x, -y, z), p.basis))
        return entries, skipped

    def saveAsTrainingCase(self, outputNode, volumeNode, folder: str, caseName: Optional[str] = None,
                           overwrite: bool = False):
        """Write the CT and the set's points as ``folder/<caseName>/`` (``ct.nii.gz`` + ``vertebrae.mrk.json``).

        The writing is the core's (``training_cases.save_training_case``); this only collects the nodes.
        ``caseName`` defaults to one made from the volume's name. Returns the core's ``SavedCase``, whose
        ``skipped`` also lists the points without a position.

        Raises:
            ValueError: no CT or no points, no point names a vertebra, two points name the same one.
            training_cases.CaseExistsError: the case exists and ``overwrite`` is False (nothing is written).
        """
        from VertebraeLabelingLib import training_cases

        if volumeNode is None or volumeNode.GetImageData() is None:
            raise ValueError(_("Select the CT the points belong to."))
        if outputNode is None:
            raise ValueError(_("Select the point list to save."))
        entries, unplaced = self.trainingCasePoints(outputNode, volumeNode)
        name = caseName or training_cases.case_name_for(volumeNode.GetName())
        saved = training_cases.save_training_case(
            folder, name, lambda path: self.writeVolume(volumeNode, path, compress=True), entries,
            overwrite=overwrite, node_name=outputNode.GetName())
        saved.skipped[:0] = unplaced
        return saved

    @staticmethod
    def _referenceImage(volumeNode):
        """A SimpleITK image with the volume's geometry (voxels are not needed, so not copied)."""
        import numpy as np
        import SimpleITK as sitk

        ijkToRas = vtk.vtkMatrix4x4()
        volumeNode.GetIJKToRASMatrix(ijkToRas)
        m = np.array([[ijkToRas.GetElement(r, c) for c in range(4)] for r in range(4)])
        m[:2, :] *= -1  # RAS -> LPS
        spacing = np.linalg.norm(m[:3, :3], axis=0)
        direction = m[:3, :3] / spacing
        dims = volumeNode.GetImageData().GetDimensions()
        image = sitk.Image([int(d) for d in dims], sitk.sitkUInt8)
        image.SetSpacing([float(s) for s in spacing])
        image.SetOrigin([float(o) for o in m[:3, 3]])
        image.SetDirection([float(d) for d in direction.flatten()])
        return image


def _regionOrNone(label: str) -> Optional[str]:
    try:
        return region_of(label)
    except KeyError:
        return None


def formatDescription(confidence: Optional[float], basis: str = "") -> str:
    """A point's description: ``"confidence 0.93; last rib pair"`` (either part may be missing)."""
    parts = []
    if confidence is not None and confidence == confidence:  # not None, not NaN
        parts.append(f"confidence {confidence:.2f}")
    if basis:
        parts.append(basis.strip())
    return "; ".join(parts)


def parseDescription(description: str) -> tuple[Optional[float], str]:
    """``(confidence or None, basis)`` from a description written by :func:`formatDescription`.

    Any other text that mentions a confidence still gives it; other text without one is taken as
    the basis (what a point says about its name).
    """
    text = (description or "").strip()
    match = _DESCRIPTION_RE.match(text)
    if match:
        return float(match.group(1)), (match.group(2) or "").strip()
    match = _CONFIDENCE_RE.search(text)
    if match:
        return float(match.group(1)), ""
    return None, text


def callReportingErrors(func: Callable[[], object], report: Callable[[str, str], None], message: str):
    """Call ``func()``; on an exception call ``report(text, details)`` once and return ``(False, None)``.

    Returns ``(True, value)`` otherwise. Unlike ``slicer.util.tryWithErrorDisplay``, which re-raises
    after its message box (so the code after it never runs, and the exception then also dumps a
    traceback to the console), the caller goes on and decides what a failure means.
    """
    try:
        return True, func()
    except Exception as e:  # reported to the user, with the traceback behind "Show details"
        report(f"{message}\n\n{e}", traceback.format_exc())
        return False, None


def connectGuiReturningTag(parameterNode, gui):
    """``parameterNode.connectGui(gui)``, returning the tag that ``disconnectGui`` needs.

    In Slicer 5.6 and 5.8 ``connectGui`` returns None (fixed in later Slicer), so the usual
    ``disconnectGui(tag)`` did nothing and every time the module was entered another set of
    connections was stacked on the widgets. There the tag is the one key that ``connectGui`` added to
    the wrapper's table of connected GUIs. None when it cannot be found either.
    """
    before = set(getattr(parameterNode, "_parameterGUIs", None) or ())
    tag = parameterNode.connectGui(gui)
    if tag is None:
        added = set(getattr(parameterNode, "_parameterGUIs", None) or ()) - before
        if len(added) == 1:
            tag = added.pop()
    return tag


#
# Widget
#


class VertebraeLabelingWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The panel."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        # (parameter node, tag, wrapper) of the GUI connection; see _connectGui.
        self._guiConnection = None
        self._job: Optional[LabelingJob] = None
        self._jobOutputNode = None
        self._jobVolumeNode = None
        self._timer = None
        self._observedNodes = []
        self._tablePoints: list[MarkupPoint] = []
        self._selectorFilterPending = False

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/VertebraeLabeling.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = VertebraeLabelingLogic()

        self._timer = qt.QTimer()
        self._timer.setInterval(200)
        self._timer.timeout.connect(self._pollJob)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        # Region lists are tagged right after they are added (and come with loaded scenes): refresh the
        # output selector's filter once the scene has settled.
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.NodeAddedEvent, self._scheduleSelectorFilter)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndImportEvent, self._scheduleSelectorFilter)

        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancelButton)
        self.ui.installTorchButton.connect("clicked(bool)", self.onInstallTorch)
        self.ui.modelPathLineEdit.connect("currentPathChanged(QString)", self.onModelPathChanged)
        self.ui.resultsTable.connect("cellClicked(int,int)", self.onTableCellClicked)
        self.ui.renameButton.connect("clicked(bool)", lambda: self.onRename(renumber=False))
        self.ui.renumberButton.connect("clicked(bool)", lambda: self.onRename(renumber=True))
        self.ui.exportMrkButton.connect("clicked(bool)", lambda: self.onExport("mrk"))
        self.ui.exportVerseButton.connect("clicked(bool)", lambda: self.onExport("verse"))
        self.ui.exportCsvButton.connect("clicked(bool)", lambda: self.onExport("csv"))
        self.ui.saveTrainingCaseButton.connect("clicked(bool)", self.onSaveTrainingCase)
        self.ui.outputMarkupsSelector.connect("currentNodeChanged(vtkMRMLNode*)", self._observeOutput)

        self.ui.progressBar.hide()
        self.ui.cancelButton.hide()
        self.ui.torchFrame.hide()
        self.initializeParameterNode()
        self._updateOutputSelectorFilter()
        self._updateTorchStatus()

    def cleanup(self) -> None:
        self._abandonJob()
        self.removeObservers()
        self._disconnectGui()

    def enter(self) -> None:
        self.initializeParameterNode()
        self._updateOutputSelectorFilter()

    def exit(self) -> None:
        if self._parameterNode:
            self._disconnectGui()
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)

    def onSceneStartClose(self, caller, event) -> None:
        # A run must not outlive its scene: its points would land in the next one.
        if self._job is not None:
            self._abandonJob()
            self._addLog(_("The scene was closed: labeling stopped."))
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            firstVolumeNode = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if firstVolumeNode:
                self._parameterNode.inputVolume = firstVolumeNode

    def setParameterNode(self, inputParameterNode) -> None:
        if self._parameterNode:
            self._disconnectGui()
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._connectGui()
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
            self.ui.modelPathLineEdit.currentPath = self._parameterNode.modelPath
            self._checkCanApply()
            self._observeOutput(self._parameterNode.outputMarkups)

    def _connectGui(self) -> None:
        node = self._parameterNode.parameterNode
        if self._guiConnection is not None and self._guiConnection[0] is node:
            return  # still connected (a connection without a tag cannot be undone): do not stack another
        self._guiConnection = (node, connectGuiReturningTag(self._parameterNode, self.ui), self._parameterNode)

    def _disconnectGui(self) -> None:
        if self._guiConnection is None:
            return
        node, tag, wrapper = self._guiConnection
        if tag is None:
            return  # cannot be undone; kept, so that the same node is not connected twice
        wrapper.disconnectGui(tag)
        self._guiConnection = None

    def _checkCanApply(self, caller=None, event=None) -> None:
        running = self._job is not None
        ok = bool(self._parameterNode and self._parameterNode.inputVolume) and not running
        self.ui.applyButton.enabled = ok
        self.ui.applyButton.toolTip = _("Find and name the vertebrae") if ok else _("Select a CT volume")
        self._refreshTable()

    def onModelPathChanged(self, path: str) -> None:
        if self._parameterNode:
            self._parameterNode.modelPath = path

    def _run(self, message: str, func: Callable[[], object], waitCursor: bool = True, report=None):
        """``callReportingErrors`` with a wait cursor (lifted before any message box) and Slicer's error box."""
        cursor = [waitCursor]

        def restoreCursor():
            if cursor[0]:
                slicer.app.restoreOverrideCursor()
                cursor[0] = False

        def showError(text: str, details: str) -> None:
            restoreCursor()
            slicer.util.errorDisplay(text, windowTitle=_("Vertebrae Labeling"), parent=slicer.util.mainWindow(),
                                     detailedText=details)

        if waitCursor:
            slicer.app.setOverrideCursor(qt.Qt.WaitCursor)
        try:
            return callReportingErrors(func, report or showError, message)
        finally:
            restoreCursor()

    # ---- output selector -------------------------------------------------------------------

    def _scheduleSelectorFilter(self, caller=None, event=None) -> None:
        if not self._selectorFilterPending:
            self._selectorFilterPending = True
            qt.QTimer.singleShot(0, self._updateOutputSelectorFilter)

    def _updateOutputSelectorFilter(self) -> None:
        """Hide the per-region lists from the output selector: picking one would start a second,
        overlapping set of lists."""
        self._selectorFilterPending = False
        if self.logic is None:
            return
        self.ui.outputMarkupsSelector.sortFilterProxyModel().hiddenNodeIDs = self.logic.regionListIDs()

    # ---- PyTorch ---------------------------------------------------------------------------

    def _torchLogic(self):
        try:
            import PyTorchUtils

            return PyTorchUtils.PyTorchUtilsLogic()
        except Exception:  # not installed, or failing to load: the banner says what to do
            return None

    def _updateTorchStatus(self) -> bool:
        """Show the PyTorch banner when torch is missing; return whether it is installed.

        Checked without importing torch (see torchStatus): a torch that is present but cannot be
        loaded is reported by the worker, in words, when Apply runs it.
        """
        installed, _version = torchStatus()
        if installed:
            self.ui.torchFrame.hide()
            return True
        if self._torchLogic() is None:
            self.ui.torchStatusLabel.text = _(
                "This module needs the PyTorch extension. Install 'PyTorch' from the Extensions "
                "Manager and restart Slicer.")
            self.ui.installTorchButton.enabled = False
        else:
            self.ui.torchStatusLabel.text = _(
                "PyTorch is not installed. Click 'Install PyTorch' (a download of several hundred "
                "MB; a CUDA build is chosen when an NVIDIA GPU is found).")
            self.ui.installTorchButton.enabled = True
        self.ui.torchFrame.show()
        return False

    def onInstallTorch(self) -> None:
        torchLogic = self._torchLogic()
        if torchLogic is None:
            return
        # Asked here (not by installTorch) so that the question has the main window as its parent and
        # no wait cursor hovers over it.
        if not slicer.util.confirmOkCancelDisplay(
                _("PyTorch will be downloaded and installed. This can take several minutes."),
                windowTitle=_("Vertebrae Labeling"), parent=slicer.util.mainWindow()):
            return
        ok, torch = self._run(_("Failed to install PyTorch."), lambda: torchLogic.installTorch(askConfirmation=False))
        if ok and torch is None:
            slicer.util.warningDisplay(_("PyTorch was not installed."), parent=slicer.util.mainWindow())
        self._updateTorchStatus()

    def _askReplace(self, question: str, otherChoice: str) -> Optional[str]:
        """Ask ``question`` with the buttons Replace, ``otherChoice`` and Cancel: "replace", "other" or None."""
        box = qt.QMessageBox(slicer.util.mainWindow())  # parented: in front of the main window on macOS
        box.setIcon(qt.QMessageBox.Question)
        box.setWindowTitle(_("Vertebrae Labeling"))
        box.setText(question)
        replace = box.addButton(_("Replace"), qt.QMessageBox.DestructiveRole)
        other = box.addButton(otherChoice, qt.QMessageBox.AcceptRole)
        box.addButton(qt.QMessageBox.Cancel)
        box.exec_()
        clicked = box.clickedButton()
        box.deleteLater()
        return "replace" if clicked == replace else "other" if clicked == other else None

    # ---- run -------------------------------------------------------------------------------

    def onApplyButton(self) -> None:
        if self._job is not None or self._parameterNode is None or not self._updateTorchStatus():
            return
        p = self._parameterNode
        volumeNode = p.inputVolume
        outputNode = p.outputMarkups
        if outputNode is not None and self.logic.isEdited(outputNode):
            answer = self._askReplace(_("'{name}' has been edited. Replace its points with the new result?").format(
                name=outputNode.GetName()), _("Create new point list"))
            if answer == "other":
                outputNode = None
            elif answer != "replace":
                return
        self.ui.logTextEdit.clear()
        stride = p.blockStride if p.blockStride != DEFAULT_STRIDE else 0
        ok, job = self._run(_("Failed to start labeling."), lambda: self.logic.startLabeling(
            volumeNode, p.device, p.modelPath, stride, mirror=p.mirrorBlocks))
        if not ok:
            return
        self._job = job
        self._jobVolumeNode, self._jobOutputNode = volumeNode, outputNode
        self._job.onProgress = self._onProgress
        self._job.onLog = self._addLog
        self._addLog(_("Started: {cmd}").format(cmd=" ".join(self._job.command)))
        self.ui.progressBar.value = 0
        self.ui.progressBar.show()
        self.ui.cancelButton.show()
        self.ui.cancelButton.enabled = True
        self._checkCanApply()
        self._timer.start()

    def onCancelButton(self) -> None:
        if self._job is not None:
            self._addLog(_("Cancelling..."))
            self.ui.cancelButton.enabled = False
            self._job.cancel()

    def _abandonJob(self) -> None:
        """Stop the running job at once and forget it (scene closed, module cleaned up)."""
        if self._timer is not None:
            self._timer.stop()
        job, self._job = self._job, None
        self._jobVolumeNode = self._jobOutputNode = None
        if job is None:
            return
        job.onProgress = job.onLog = None
        job.kill()
        job.cleanup()
        if hasattr(self, "ui"):
            self.ui.progressBar.hide()
            self.ui.cancelButton.hide()
            self._checkCanApply()

    def _onProgress(self, fraction: float, message: str) -> None:
        self.ui.progressBar.value = int(round(100 * fraction))
        self.ui.progressBar.setFormat(f"%p% {message}")

    def _addLog(self, line: str) -> None:
        self.ui.logTextEdit.appendPlainText(line)

    def _pollJob(self) -> None:
        job = self._job
        if job is None or job.poll():
            return
        self._timer.stop()
        volumeNode, outputNode = self._jobVolumeNode, self._jobOutputNode
        self._job = self._jobVolumeNode = self._jobOutputNode = None
        self.ui.progressBar.hide()
        self.ui.cancelButton.hide()
        try:
            if job.cancelled:
                self._addLog(_("Cancelled."))
                return

            def finish():
                result = self.logic.readResultFile(job.resultPath) if job.succeeded else None
                return result, self.logic.finishLabeling(job, volumeNode, outputNode)

            ok, finished = self._run(_("Labeling failed."), finish)
            if not ok:
                return
            result, outputNode = finished
            if self._parameterNode is not None:
                self._parameterNode.outputMarkups = outputNode
            self._observeOutput(outputNode)
            self._updateOutputSelectorFilter()
            n = len(self.logic.points(outputNode))
            self._addLog(_("Placed {n} points.").format(n=n))
            messages = (result or {}).get("messages", [])
            if messages:
                slicer.util.warningDisplay("\n".join(messages), windowTitle=_("Vertebrae Labeling"),
                                           parent=slicer.util.mainWindow())
        finally:
            job.cleanup()
            self._checkCanApply()

    # ---- results table and corrections -----------------------------------------------------

    def _observeOutput(self, node=None) -> None:
        """Refresh the table whenever a point of the set changes (drag, rename, delete)."""
        for n in self._observedNodes:
            self.removeObserver(n, slicer.vtkMRMLMarkupsNode.PointModifiedEvent, self._onPointsChanged)
            self.removeObserver(n, slicer.vtkMRMLMarkupsNode.PointRemovedEvent, self._onPointsChanged)
            self.removeObserver(n, slicer.vtkMRMLMarkupsNode.PointAddedEvent, self._onPointsChanged)
        self._observedNodes = []
        if node is not None and self.logic is not None:
            self._observedNodes = self.logic.allNodes(node)
            for n in self._observedNodes:
                self.addObserver(n, slicer.vtkMRMLMarkupsNode.PointModifiedEvent, self._onPointsChanged)
                self.addObserver(n, slicer.vtkMRMLMarkupsNode.PointRemovedEvent, self._onPointsChanged)
                self.addObserver(n, slicer.vtkMRMLMarkupsNode.PointAddedEvent, self._onPointsChanged)
        self._refreshTable()

    def _onPointsChanged(self, caller=None, event=None) -> None:
        # Drags fire many events; one refresh per event-loop pass is plenty.
        qt.QTimer.singleShot(0, self._refreshTable)

    def _refreshTable(self) -> None:
        table = self.ui.resultsTable
        outputNode = self._parameterNode.outputMarkups if self._parameterNode else None
        self._tablePoints = self.logic.points(outputNode) if outputNode is not None else []
        threshold = self._parameterNode.confidenceThreshold if self._parameterNode else LOW_CONFIDENCE
        duplicates = set(corrections.duplicate_names([p.label for p in self._tablePoints]))
        table.setRowCount(len(self._tablePoints))
        for row, p in enumerate(self._tablePoints):
            region = _regionOrNone(p.label)
            conf = "" if p.confidence is None else f"{p.confidence:.2f}"
            for col, text in enumerate((p.label, region or "-", conf, p.basis)):
                item = qt.QTableWidgetItem(text)
                item.setFlags(qt.Qt.ItemIsSelectable | qt.Qt.ItemIsEnabled)
                if col == 0 and region in REGION_COLORS:
                    item.setBackground(qt.QBrush(qt.QColor.fromRgbF(*REGION_COLORS[region])))
                if col == 2 and corrections.is_low_confidence(p.confidence, threshold):
                    item.setBackground(qt.QBrush(qt.QColor(255, 200, 120)))
                    item.setToolTip(_("Low confidence: please check this vertebra."))
                if col == 0 and p.label in duplicates:
                    item.setToolTip(_("This name is used twice: rename one and renumber."))
                    item.setForeground(qt.QBrush(qt.QColor(200, 0, 0)))
                if col == 3 and p.basis:
                    item.setToolTip(p.basis)  # the column is narrow; the full text on hover
                table.setItem(row, col, item)
        hasPoints = bool(self._tablePoints)
        for button in (self.ui.renameButton, self.ui.renumberButton, self.ui.exportMrkButton,
                       self.ui.exportVerseButton, self.ui.exportCsvButton, self.ui.saveTrainingCaseButton):
            button.enabled = hasPoints

    def onTableCellClicked(self, row: int, column: int) -> None:
        if not 0 <= row < len(self._tablePoints):
            return
        p = self._tablePoints[row]
        self.ui.newNameLineEdit.text = p.label
        slicer.modules.markups.logic().JumpSlicesToNthPointInMarkup(p.node.GetID(), p.index, True)

    def onRename(self, renumber: bool) -> None:
        row = self.ui.resultsTable.currentRow()
        if not 0 <= row < len(self._tablePoints) or self._parameterNode is None:
            slicer.util.warningDisplay(_("Select a point in the table first."), parent=slicer.util.mainWindow())
            return
        outputNode = self._parameterNode.outputMarkups
        self._run(_("Could not rename the point."), lambda: self.logic.renamePoint(
            outputNode, self._tablePoints[row], self.ui.newNameLineEdit.text, renumber))
        self._observeOutput(outputNode)
        self._updateOutputSelectorFilter()

    def onExport(self, kind: str) -> None:
        outputNode = self._parameterNode.outputMarkups if self._parameterNode else None
        if outputNode is None:
            return
        suffix = {"mrk": ".mrk.json", "verse": "_ctd.json", "csv": ".csv"}[kind]
        filters = {"mrk": "Markups JSON (*.mrk.json)", "verse": "VerSe centroids (*_ctd.json)", "csv": "CSV (*.csv)"}
        path = qt.QFileDialog.getSaveFileName(self.parent, _("Export vertebrae"),
                                              outputNode.GetName() + suffix, filters[kind])
        if not path:
            return

        def export():
            if kind == "mrk":
                self.logic.exportMarkupsJson(outputNode, path)
            elif kind == "verse":
                volumeNode = self.logic.sourceVolume(outputNode) or self._parameterNode.inputVolume
                self.logic.exportVerseJson(outputNode, volumeNode, path)
            else:
                self.logic.exportCsv(outputNode, path)

        ok, _unused = self._run(_("Export failed."), export)
        if ok:
            self._addLog(_("Exported {path}").format(path=path))

    def onSaveTrainingCase(self) -> None:
        """Save the CT and its (corrected) points as a training case in a folder the user picks."""
        from VertebraeLabelingLib import training_cases

        outputNode = self._parameterNode.outputMarkups if self._parameterNode else None
        if outputNode is None:
            return
        volumeNode = self.logic.sourceVolume(outputNode) or self._parameterNode.inputVolume
        if volumeNode is None:
            slicer.util.warningDisplay(_("Select the CT the points belong to."), parent=slicer.util.mainWindow())
            return
        settings = qt.QSettings()
        folder = qt.QFileDialog.getExistingDirectory(
            self.parent, _("Folder of training cases (one sub-folder per CT)"),
            str(settings.value(SETTINGS_TRAINING_FOLDER, "") or ""))
        if not folder:
            return
        settings.setValue(SETTINGS_TRAINING_FOLDER, folder)
        caseName = training_cases.case_name_for(volumeNode.GetName())
        overwrite = False
        if os.path.lexists(os.path.join(folder, caseName)):
            other = training_cases.free_case_name(folder, caseName)
            answer = self._askReplace(_("A training case named '{name}' already exists in {folder}. Replace it?").format(
                name=caseName, folder=folder), _("Save as '{name}'").format(name=other))
            if answer == "replace":
                overwrite = True
            elif answer == "other":
                caseName = other
            else:
                return
        ok, saved = self._run(_("Could not save the training case."), lambda: self.logic.saveAsTrainingCase(
            outputNode, volumeNode, folder, caseName, overwrite))
        if not ok:
            return
        lines = [_("Saved the CT and {n} vertebrae ({first} to {last}) to {path}.").format(
            n=len(saved.names), first=saved.names[0], last=saved.names[-1], path=saved.folder)]
        if saved.skipped:
            lines.append(_("Not saved (no vertebra name or no position):") + " " + "; ".join(saved.skipped))
        lines.extend(saved.warnings)
        lines.append(_("Train on the folder with: python -m training.train --data markups:{folder}").format(
            folder=folder))
        for line in lines:
            self._addLog(line)
        slicer.util.infoDisplay("\n".join(lines), windowTitle=_("Vertebrae Labeling"), parent=slicer.util.mainWindow())


#
# Test (runs inside Slicer: Reload and Test, or ctest via slicer_add_python_unittest)
#


class VertebraeLabelingTest(ScriptedLoadableModuleTest):
    """End-to-end test on the bundled sample CT, inside a real Slicer."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        # "Reload and Test" calls runTest() directly, outside a unittest runner, where a
        # skipTest() would surface as a failure; report the skip instead.
        import unittest

        for test in (self.test_SampleDataAndMarkups, self.test_Panel, self.test_Labeling):
            self.setUp()
            try:
                test()
            except unittest.SkipTest as skip:
                self.delayDisplay(f"Skipped {test.__name__}: {skip}")

    def _loadSample(self):
        import SampleData

        registerSampleData()
        volumeNode = SampleData.downloadSample(SAMPLE_NAME)
        self.assertIsNotNone(volumeNode)
        return volumeNode

    @staticmethod
    def _result():
        return {"format": "vertebrae-labeling-slicer-result", "version": 1, "coordinateSystem": "LPS",
                "vertebrae": [{"name": n, "position": [0.0, -100.0, z], "confidence": 0.9, "basis": b}
                              for n, z, b in (("T12", 300.0, "last rib pair"), ("L1", 270.0, "last rib pair"),
                                              ("L2", 240.0, ""))]}

    def test_SampleDataAndMarkups(self):
        """Result -> region point lists -> renumber -> edit detection -> export, without the network."""
        self.delayDisplay("Loading the sample CT")
        volumeNode = self._loadSample()
        logic = VertebraeLabelingLogic()
        userList = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "my points")
        selection = slicer.app.applicationLogic().GetSelectionNode()
        selection.SetReferenceActivePlaceNodeID(userList.GetID())
        out = logic.createOutputNode(volumeNode)
        logic.setResult(out, volumeNode, self._result())
        pts = logic.points(out)
        self.assertEqual([p.label for p in pts], ["T12", "L1", "L2"])
        self.assertEqual([p.basis for p in pts], ["last rib pair", "last rib pair", ""])
        self.assertAlmostEqual(pts[0].positionRas[1], 100.0)  # LPS y -100 -> RAS y +100
        self.assertEqual(selection.GetActivePlaceNodeID(), userList.GetID())  # "place point" still adds to mine
        self.assertIs(logic.sourceVolume(out), volumeNode)
        self.assertFalse(logic.isEdited(out))
        logic.renamePoint(out, pts[0], "L1", renumber=True)
        self.assertEqual([p.label for p in logic.points(out)], ["L1", "L2", "L3"])
        self.assertEqual(logic.points(out)[0].basis, BASIS_BY_HAND)
        self.assertTrue(logic.isEdited(out))
        nodesAfterRun = slicer.mrmlScene.GetNumberOfNodes()
        path = os.path.join(slicer.app.temporaryPath, "VertebraeLabelingTest.mrk.json")
        logic.exportMarkupsJson(out, path)
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), nodesAfterRun)  # the export left nothing behind
        self.assertEqual(selection.GetActivePlaceNodeID(), userList.GetID())
        loaded = slicer.util.loadMarkups(path)
        self.assertEqual(loaded.GetNumberOfControlPoints(), 3)
        self.delayDisplay("Markups test passed")

    def test_Panel(self):
        """The panel: results table with "How named", output selector without region lists, entering the
        module twice, an error that does not escape, and a run stopped by closing the scene."""
        volumeNode = self._loadSample()
        slicer.util.selectModule("VertebraeLabeling")
        widget = slicer.modules.vertebraelabeling.widgetRepresentation().self()
        logic = widget.logic
        out = logic.createOutputNode(volumeNode)
        logic.setResult(out, volumeNode, self._result())
        widget._parameterNode.outputMarkups = out
        table = widget.ui.resultsTable
        self.assertEqual(table.rowCount, 3)
        self.assertEqual(table.horizontalHeaderItem(3).text(), "How named")
        self.assertEqual(table.item(0, 3).text(), "last rib pair")
        self.assertEqual(table.item(0, 3).toolTip(), "last rib pair")
        self.assertEqual(table.item(2, 3).text(), "")

        widget._updateOutputSelectorFilter()
        hidden = list(widget.ui.outputMarkupsSelector.sortFilterProxyModel().hiddenNodeIDs)
        self.assertEqual(sorted(hidden), sorted(logic.regionListIDs()))
        self.assertNotIn(out.GetID(), hidden)

        for _i in range(2):  # leave and come back: still one GUI connection
            slicer.util.selectModule("Data")
            slicer.util.selectModule("VertebraeLabeling")
        wrapper = widget._guiConnection[2] if widget._guiConnection else None
        if wrapper is not None and hasattr(wrapper, "_parameterGUIs"):
            self.assertEqual(len(wrapper._parameterGUIs), 1)

        reports = []
        ok, value = widget._run("Could not do it.", lambda: 1 / 0, report=lambda text, details: reports.append(text))
        self.assertEqual((ok, value), (False, None))
        self.assertEqual(len(reports), 1)
        self.assertIn("division by zero", reports[0])

        # A run that is still going when the scene closes is stopped, and writes nothing afterwards.
        script = os.path.join(slicer.app.temporaryPath, "VertebraeLabelingTestStuckWorker.py")
        with open(script, "w") as f:
            f.write("import time\nprint('PROGRESS 0.1 working', flush=True)\ntime.sleep(600)\n")
        job = logic.startLabeling(volumeNode, command=[logic.pythonExecutable, script])
        widget._job, widget._jobVolumeNode, widget._jobOutputNode = job, volumeNode, None
        widget._timer.start()
        slicer.mrmlScene.Clear()
        self.assertIsNone(widget._job)
        t0 = time.monotonic()
        while job.poll() and time.monotonic() - t0 < 10:
            time.sleep(0.1)
        self.assertIsNotNone(job.proc.poll())
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLMarkupsFiducialNode"), 0)
        self.delayDisplay("Panel test passed")

    def test_Labeling(self):
        """The full run through the worker process (needs PyTorch)."""
        if not torchStatus()[0]:
            self.skipTest("PyTorch is not installed")
        volumeNode = self._loadSample()
        logic = VertebraeLabelingLogic()
        self.delayDisplay("Labeling the sample CT (a minute on a CPU)")
        out = logic.process(volumeNode, device="auto", timeout=1800)
        self.assertFalse(logic.isEdited(out))
        for p in logic.points(out):
            self.assertIn(p.label, NAME_TO_INDEX)
        with self.assertRaises(ValueError):
            pts = logic.points(out)
            if pts:
                pts[0].node.SetNthControlPointPosition(pts[0].index, 0.0, 0.0, 0.0)
                self.assertTrue(logic.isEdited(out))
                logic.process(volumeNode, out)
            else:
                raise ValueError("no points to edit")
        self.delayDisplay("Labeling test passed")
