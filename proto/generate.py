"""Regenerates the Python stubs: `python proto/generate.py [OUT_DIR]`.

Two sets: psflow's wire contract (`psflow.proto`), and TensorFlow Serving's messages under
`tfserving/` (the `psflow.proto.tfserving` package). The stubs are committed; a test
regenerates them into a temporary folder and fails when they differ from the committed ones.
"""

import pathlib
import re
import sys

from grpc_tools import protoc

HERE = pathlib.Path(__file__).resolve().parent
PROTO = "psflow.proto"
TFSERVING = "tfserving"
# The TF Serving files that declare services and so get a *_pb2_grpc.py.
TFSERVING_SERVICES = ("prediction_service", "model_service")


def _protoc(out_dir, protos, grpc):
    include = pathlib.Path(protoc.__file__).parent / "_proto"
    args = ["grpc_tools.protoc", f"-I{HERE}", f"-I{include}", f"--python_out={out_dir}",
            f"--pyi_out={out_dir}"]
    if grpc:
        args.append(f"--grpc_python_out={out_dir}")
    status = protoc.main(args + [str(HERE / p) for p in protos])
    if status != 0:
        raise SystemExit(f"protoc failed with status {status}")


def _relative_imports(path, module):
    """protoc writes imports by the .proto's path (`import psflow_pb2`, `from tfserving import
    tensor_pb2`); the stubs live in psflow.proto and psflow.proto.tfserving, so they import
    their siblings relatively, which works both from the source tree and when installed."""
    text = path.read_text()
    if module:
        text = re.sub(rf"^from {module} import ", "from . import ", text, flags=re.M)
    else:
        text = re.sub(r"^import (\w+_pb2) as", r"from . import \1 as", text, flags=re.M)
    path.write_text(text)


def generate(out_dir=HERE):
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _protoc(out_dir, [PROTO], grpc=True)
    _relative_imports(out_dir / "psflow_pb2_grpc.py", None)
    written = [out_dir / name for name in ("psflow_pb2.py", "psflow_pb2.pyi",
                                           "psflow_pb2_grpc.py")]

    stems = sorted(p.stem for p in (HERE / TFSERVING).glob("*.proto"))
    _protoc(out_dir, [f"{TFSERVING}/{stem}.proto" for stem in stems], grpc=False)
    _protoc(out_dir, [f"{TFSERVING}/{stem}.proto" for stem in TFSERVING_SERVICES], grpc=True)
    names = [f"{stem}{suffix}" for stem in stems for suffix in ("_pb2.py", "_pb2.pyi")]
    names += [f"{stem}_pb2_grpc.py" for stem in TFSERVING_SERVICES]
    for name in names:
        _relative_imports(out_dir / TFSERVING / name, TFSERVING)
    return written + [out_dir / TFSERVING / name for name in sorted(names)]


if __name__ == "__main__":
    for path in generate(sys.argv[1] if len(sys.argv) > 1 else HERE):
        print(path)
