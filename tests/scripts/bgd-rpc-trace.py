"""Runs BuildGrid's `bgd` CLI and prints which gRPC methods it called.

Usage: /var/tmp/bgd-venv/bin/python bgd-rpc-trace.py cas --remote http://127.0.0.1:8980 upload-dir DIR
(run it with the python of the venv that has buildgrid installed). The counts
go to stderr as "RPCS: {method: calls}" when bgd exits.
"""
import atexit
import collections
import sys

import grpc

calls = collections.Counter()


class _Count(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,
             grpc.StreamUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    def _note(self, details):
        calls[details.method] += 1

    def intercept_unary_unary(self, cont, details, req):
        self._note(details)
        return cont(details, req)

    def intercept_unary_stream(self, cont, details, req):
        self._note(details)
        return cont(details, req)

    def intercept_stream_unary(self, cont, details, reqs):
        self._note(details)
        return cont(details, reqs)

    def intercept_stream_stream(self, cont, details, reqs):
        self._note(details)
        return cont(details, reqs)


_insecure = grpc.insecure_channel
grpc.insecure_channel = lambda *a, **k: grpc.intercept_channel(_insecure(*a, **k), _Count())
atexit.register(lambda: sys.stderr.write("RPCS: %s\n" % dict(sorted(calls.items()))))

from buildgrid.server.app.cli import cli  # noqa: E402  (after the patch)

sys.argv = ["bgd"] + sys.argv[1:]
cli()
