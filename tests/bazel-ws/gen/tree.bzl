"""A rule whose single output is a directory (a tree artifact), made by one
action: genrule cannot declare directories, so this is the smallest native
way to make Bazel send `output_directories` and read back a Tree."""

def _tree_impl(ctx):
    out = ctx.actions.declare_directory(ctx.label.name)
    ctx.actions.run_shell(
        outputs = [out],
        inputs = ctx.files.srcs,
        command = """
set -eu
d="$1"; shift
# (No empty directory: Bazel 4 keeps only files of tree artifacts.)
mkdir -p "$d/sub/deeper"
for f in "$@"; do cp "$f" "$d/"; done
echo nested > "$d/sub/deeper/n.txt"
printf '#!/bin/sh\\necho tool ok\\n' > "$d/sub/tool.sh"
chmod 755 "$d/sub/tool.sh"
# A relative symlink inside the tree: it must come back as a symlink.
ln -s deeper/n.txt "$d/sub/link_to_n"
""",
        arguments = [out.path] + [f.path for f in ctx.files.srcs],
        mnemonic = "MakeTree",
    )
    return [DefaultInfo(files = depset([out]), runfiles = ctx.runfiles(files = [out]))]

tree = rule(
    implementation = _tree_impl,
    attrs = {"srcs": attr.label_list(allow_files = True)},
)
