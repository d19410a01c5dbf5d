"""Run the core's ``label_ct`` on one image file and write the result as JSON.

The Slicer module starts this in a separate ``PythonSlicer`` process so that Slicer stays
responsive while the network runs, and so that importing torch can never take Slicer down.

Protocol with the panel (kept deliberately tiny and line based):

- stdout lines ``PROGRESS <fraction 0..1> <message>`` drive the progress bar; every other line
  goes to the log.
- an ``ERROR <message>`` line carries a message written for the user (bad image, bad model).
- the run stops cooperatively when the ``--cancel-file`` appears (the panel also kills the
  process tree if that does not happen quickly).
- exit code 0: result written; 2: user-fixable error (including a PyTorch that cannot be loaded);
  3: cancelled; anything else: a bug.
- the result file is written atomically (temporary file + rename), so a half-written file is
  never read.
"""

import argparse
import json
import os
import sys
import traceback

EXIT_OK = 0
EXIT_USER_ERROR = 2
EXIT_CANCELLED = 3

RESULT_FORMAT = "vertebrae-labeling-slicer-result"
RESULT_VERSION = 1


def _parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lib-dir", required=True, help="folder that contains VertebraeLabelingLib")
    parser.add_argument("--input", required=True, help="CT image file")
    parser.add_argument("--output", required=True, help="result JSON file to write")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--model", default="", help="weights file; empty = the bundled model")
    parser.add_argument("--stride", type=int, default=0, help="block stride; 0 = the core's default")
    parser.add_argument("--no-mirror", dest="mirror", action="store_false", default=True,
                        help="skip the mirrored second look at each block")
    parser.add_argument("--cancel-file", default="", help="stop as soon as this file exists")
    return parser.parse_args(argv)


def _write_json_atomic(path, payload):
    tmp = path + ".part"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(payload, f, indent=1)
    os.replace(tmp, path)


def main(argv=None):
    """Entry point; returns the process exit code."""
    args = _parse_args(sys.argv[1:] if argv is None else argv)
    sys.path.insert(0, args.lib_dir)
    from VertebraeLabelingLib.errors import CancelledError, VertebraeLabelingError

    def progress(fraction, message):
        print(f"PROGRESS {float(fraction):.4f} {message}", flush=True)

    def cancel():
        return bool(args.cancel_file) and os.path.exists(args.cancel_file)

    progress(0.0, "loading PyTorch and the model")
    try:
        # First, on its own: the panel only checks that torch is installed (importing it inside
        # Slicer would freeze the panel, and a broken install can raise anything, e.g. an OSError
        # for a DLL on Windows); this is where such a failure is put into words.
        import torch  # noqa: F401
    except Exception as e:
        if isinstance(e, ModuleNotFoundError) and e.name == "torch":
            print("ERROR PyTorch is not installed. Install it with the PyTorch Utils module "
                  "(PyTorch extension).", flush=True)
        else:
            print(f"ERROR PyTorch is installed but could not be loaded ({type(e).__name__}: {e}). Reinstall it "
                  "with the PyTorch Utils module (Uninstall, restart Slicer, Install).", flush=True)
        return EXIT_USER_ERROR
    try:
        # Imported here, not at the top: torch takes seconds to import and the panel should
        # already show that something is happening.
        from VertebraeLabelingLib.image_io import read_image
        from VertebraeLabelingLib.inference import label_ct

        kwargs = {"device": args.device, "progress": progress, "cancel": cancel}
        if args.model:
            kwargs["model_path"] = args.model
        if args.stride > 0:
            kwargs["stride"] = args.stride
        if not args.mirror:
            kwargs["mirror"] = False
        result = label_ct(read_image(args.input), **kwargs)
    except CancelledError:
        print("Cancelled.", flush=True)
        return EXIT_CANCELLED
    except VertebraeLabelingError as e:
        print(f"ERROR {e}", flush=True)
        return EXIT_USER_ERROR
    except Exception:
        traceback.print_exc(file=sys.stdout)
        return 1
    payload = {
        "format": RESULT_FORMAT,
        "version": RESULT_VERSION,
        "coordinateSystem": "LPS",
        "vertebrae": [
            {"name": v.name, "position": [float(c) for c in v.position_lps], "confidence": float(v.confidence),
             # how the name was reached ("last rib pair", "network only", ...); shown by the panel
             "basis": str(getattr(v, "basis", "") or "")}
            for v in result.vertebrae
        ],
        "messages": list(result.messages),
        "modelTrained": bool(result.model_trained),
        "timings": {k: float(v) for k, v in result.timings.items()},
    }
    _write_json_atomic(args.output, payload)
    print(f"Found {len(result.vertebrae)} vertebrae.", flush=True)
    return EXIT_OK


def _use_utf8_output():
    """Write stdout/stderr as UTF-8, which is how the panel decodes the pipe.

    A piped stream otherwise uses the locale's encoding (the ANSI code page on Windows), so
    a message with e.g. "×" signs or a non-Latin file path would arrive garbled or, worse,
    make ``print`` raise UnicodeEncodeError.
    """
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.reconfigure(encoding="utf-8", errors="replace")
        except (AttributeError, ValueError):  # not a TextIOWrapper (replaced stream)
            pass


if __name__ == "__main__":
    _use_utf8_output()
    sys.exit(main())
