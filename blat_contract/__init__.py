"""The contract shared by the model side, export and the server.

Everything here is torch-free (numpy and the standard library only), so that the
server can import it. The model side (`blat`), `export` and `server` all depend on
this package; it depends on none of them.
"""
