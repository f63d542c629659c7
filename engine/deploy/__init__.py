"""Deployment of a chosen variant: selections (versioned JSON naming it), bundles (its device and server programs as
TorchScript and ONNX, codec and quantiser tables, a sha256 manifest; `export` writes them, `bundle_files` checks them
without torch, `bundle` loads them without unpickling anything), the wire protocol, real co-inference over a paced
link (`server`, `client`, `link`) with what it is measured against (`timing`), and the device part run by
onnxruntime without torch (`onnx_device`)."""
