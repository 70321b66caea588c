"""Regenerates the Python stubs from psflow.proto: `python proto/generate.py [OUT_DIR]`.

The stubs are committed; a test regenerates them into a temporary folder and fails when they
differ from the committed ones.
"""

import pathlib
import re
import sys

from grpc_tools import protoc

HERE = pathlib.Path(__file__).resolve().parent
PROTO = "psflow.proto"


def generate(out_dir=HERE):
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    include = pathlib.Path(protoc.__file__).parent / "_proto"
    status = protoc.main(["grpc_tools.protoc", f"-I{HERE}", f"-I{include}",
                          f"--python_out={out_dir}", f"--pyi_out={out_dir}",
                          f"--grpc_python_out={out_dir}", str(HERE / PROTO)])
    if status != 0:
        raise SystemExit(f"protoc failed with status {status}")
    # protoc writes `import psflow_pb2`; the stubs live in the psflow.proto package.
    grpc_stub = out_dir / "psflow_pb2_grpc.py"
    text = re.sub(r"^import psflow_pb2 as", "from . import psflow_pb2 as",
                  grpc_stub.read_text(), flags=re.M)
    grpc_stub.write_text(text)
    return [out_dir / name for name in ("psflow_pb2.py", "psflow_pb2.pyi", "psflow_pb2_grpc.py")]


if __name__ == "__main__":
    for path in generate(sys.argv[1] if len(sys.argv) > 1 else HERE):
        print(path)
