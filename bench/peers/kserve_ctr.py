"""The peer of bench/serve.py: KServe's Python ModelServer serving the same CTR model's
forward pass in numpy, over its V1 protocol (TF Serving's REST format:
`POST /v1/models/NAME:predict` with {"instances": [...]} -> {"predictions": [...]}).

It runs in a virtual environment of its own with `kserve` installed (never psflow), reads
the arrays straight from psflow's export (variables.npz and tables/*.npz: plain numpy files),
and computes what the exported graph computes: each of the 26 ids looked up in the sorted
keys of the embedding and wide tables (an unknown key reads zeros), the DNN 256-128 with
ReLU, the output layer plus the wide sum, a sigmoid. KServe's default settings otherwise.

    PYTHON_WITH_KSERVE bench/peers/kserve_ctr.py --export_dir BASE/1 --model_name ctr \
        --http_port 8080 --grpc_port 8081
"""

import argparse
import json
import os

import numpy as np
from kserve import Model, ModelServer


def load_arrays(export_dir):
    """({variable name: array}, {table name: (sorted keys, rows)}) of a psflow export."""
    with open(os.path.join(export_dir, "saved_model.json")) as f:
        manifest = json.load(f)
    with np.load(os.path.join(export_dir, "variables.npz"), allow_pickle=False) as data:
        variables = {name: data[name] for name in data.files}
    tables = {}
    for name, file in manifest["tables"].items():
        with np.load(os.path.join(export_dir, file), allow_pickle=False) as data:
            tables[name] = (data["keys"], data["values"])
    return variables, tables


def lookup(table, ids):
    keys, rows = table
    flat = ids.reshape(-1)
    out = np.zeros((flat.size, rows.shape[1]), rows.dtype)
    at = np.minimum(np.searchsorted(keys, flat), keys.size - 1)
    found = keys[at] == flat
    out[found] = rows[at[found]]
    return out.reshape(ids.shape + (rows.shape[1],))


class CTRModel(Model):
    def __init__(self, name, export_dir):
        super().__init__(name)
        self.export_dir = export_dir
        self.ready = False

    def load(self):
        variables, tables = load_arrays(self.export_dir)
        self.embedding, self.wide = tables["embedding"], tables["wide"]
        self.layers = [(variables[f"dnn/w{i}"], variables[f"dnn/b{i}"]) for i in range(2)]
        self.out = variables["dnn/out"]
        self.ready = True
        return self.ready

    def forward(self, ids, dense):
        h = np.concatenate([lookup(self.embedding, ids).reshape(len(ids), -1), dense], axis=1)
        for w, b in self.layers:
            h = np.maximum(h @ w + b, 0)
        logit = h @ self.out + lookup(self.wide, ids).sum(axis=1)
        return 1.0 / (1.0 + np.exp(-logit))

    def predict(self, payload, headers=None):
        instances = payload["instances"]
        ids = np.asarray([row["ids"] for row in instances], dtype=np.int64)
        dense = np.asarray([row["dense"] for row in instances], dtype=np.float32)
        return {"predictions": [{"prob": p} for p in self.forward(ids, dense).tolist()]}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--export_dir", required=True)
    parser.add_argument("--model_name", default="ctr")
    args, _ = parser.parse_known_args()  # KServe reads its own flags (--http_port, ...)
    model = CTRModel(args.model_name, args.export_dir)
    model.load()
    ModelServer().start([model])


if __name__ == "__main__":
    main()
