"""Deployment of a chosen variant: selections (versioned JSON naming it), bundles (its device and server programs as
TorchScript, codec and quantiser tables, a sha256 manifest; `export` writes them, `bundle` reads them without
unpickling anything), the wire protocol, and real co-inference over a paced link (`server`, `client`, `link`) with
what it is measured against (`timing`)."""
