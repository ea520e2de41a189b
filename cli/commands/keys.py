"""``emim-stream keys``: write a CURVE key pair for the publisher (``--name server``) or a subscriber.

Writes ``DIR/NAME.key`` (public, 0644) and ``DIR/NAME.key_secret`` (secret, 0600) in pyzmq's certificate format
(see :mod:`emim_stream.pipeline.comms.curve`) and prints where each file goes.
"""

from __future__ import annotations

import argparse

from emim_stream.pipeline.comms.curve import PUBLIC_SUFFIX, SECRET_SUFFIX, load_public_key, write_key_pair

HELP = "write a CURVE key pair (publisher: --name server; one per subscriber: --name NAME)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``emim-stream keys``."""
    parser.add_argument("--out", required=True, metavar="DIR", help="directory for the key files (made 0700 if new)")
    parser.add_argument(
        "--name", default="server", help="key pair name: 'server' for the publisher, any name for a subscriber"
    )
    parser.add_argument("--force", action="store_true", help="overwrite an existing key pair of that name")


def main(args: argparse.Namespace) -> int:
    """Write the pair and say where each file goes; exit 0."""
    public_path, secret_path = write_key_pair(args.out, args.name, overwrite=args.force)
    print(f"public key  {public_path}  {load_public_key(public_path).decode()}")
    print(f"secret key  {secret_path}  (mode 0600; keep it on this machine)")
    if args.name == "server":
        print(
            f"publisher:   set both publish.curve_secret_key_file={secret_path} and publish.curve_clients_dir=DIR "
            f"(DIR holds the public *{PUBLIC_SUFFIX} file of every subscriber allowed in: 'keys --name NAME')"
        )
        print(f"subscribers: copy {public_path} and pass --curve-server-key {public_path.name}")
    else:
        print(f"publisher:   copy {public_path} into its publish.curve_clients_dir (*{PUBLIC_SUFFIX} files)")
        print(f"subscriber:  pass --curve-client-key {secret_path} (the {SECRET_SUFFIX} file)")
    return 0
