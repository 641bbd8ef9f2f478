#!/usr/bin/env bash
# Vendor Swagger UI (the /docs page) into dagserve/http/static/swagger-ui from the npm registry,
# and record every vendored file's SHA-256 in dagserve/http/static/vendor.json (checked by
# tests/http/test_assets.py). Usage: scripts/vendor_swagger_ui.sh [VERSION]
set -euo pipefail
version="${1:-5.35.0}"
root="$(cd "$(dirname "$0")/.." && pwd)"
dest="$root/dagserve/http/static/swagger-ui"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "swagger-ui-dist@$version" >/dev/null && tar xzf "swagger-ui-dist-$version.tgz")
rm -rf "$dest" && mkdir -p "$dest"
for f in swagger-ui-bundle.js swagger-ui-bundle.js.LICENSE.txt swagger-ui.css LICENSE NOTICE; do
    cp "$work/package/$f" "$dest/$f"
done
integrity="$(cd "$work" && npm view "swagger-ui-dist@$version" dist.integrity)"
tarball="$(sha256sum "$work/swagger-ui-dist-$version.tgz" | cut -d' ' -f1)"
python3 - "$root" "$version" "$integrity" "$tarball" <<'PY'
import hashlib, json, pathlib, sys
root, version, integrity, tarball = sys.argv[1:]
static = pathlib.Path(root) / "dagserve/http/static"
files = {p.relative_to(static).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
         for p in sorted((static / "swagger-ui").iterdir())}
doc = {"swagger-ui-dist": {"version": version, "source": f"npm pack swagger-ui-dist@{version}",
       "integrity": integrity, "tarball_sha256": tarball, "license": "Apache-2.0", "files": files}}
(static / "vendor.json").write_text(json.dumps(doc, indent=2) + "\n")
PY
echo "vendored swagger-ui-dist $version into $dest"
