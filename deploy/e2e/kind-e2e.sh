#!/usr/bin/env bash
# End-to-end check of cliproxy on a throwaway kind cluster: images, Helm chart, operator, proxy, key rotation.
#
# Needs docker (with a running daemon), kind, kubectl and helm. When one is missing it prints "SKIPPED: ..." and
# exits 0 without touching anything. Run from anywhere: paths are resolved from this file's location.
#
# Knobs (environment): CLUSTER (kind cluster name), NAMESPACE, RELEASE (Helm release), TAG (image tag; default the
# chart's IMAGE_TAG from deploy/helm/cliproxy/images.env, which also names the images),
# PROXY_SERVICE (the chart's proxy Service; default "<release>-proxy"), CLIENT_KEY (the gateway's client key, put in a
# Secret labelled cliproxy.io/client-keys-for=default: a gateway without one refuses callers), KEEP_CLUSTER=1 (leave the cluster up for debugging), TIMEOUT (seconds per wait),
# ROTATION_TIMEOUT (seconds a rotated upstream key may take to reach the proxy: the chart's default API source
# applies it within a second or two of the operator's re-render; the kubelet's volume sync would take minutes).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
CHART="$REPO/deploy/helm/cliproxy"
# PROXY_IMAGE, OPERATOR_IMAGE and IMAGE_TAG: the chart's default images, named in one place.
# shellcheck source=SCRIPTDIR/../helm/cliproxy/images.env
source "$CHART/images.env"

CLUSTER=${CLUSTER:-cliproxy-e2e}
NAMESPACE=${NAMESPACE:-cliproxy-e2e}
RELEASE=${RELEASE:-cliproxy}
TAG=${TAG:-$IMAGE_TAG}
PROXY_SERVICE=${PROXY_SERVICE:-${RELEASE}-proxy}
PROXY_PORT=8317
CLIENT_KEY=${CLIENT_KEY:-e2e-client-key}
KEEP_CLUSTER=${KEEP_CLUSTER:-0}
TIMEOUT=${TIMEOUT:-180}
ROTATION_TIMEOUT=${ROTATION_TIMEOUT:-15}
CURL_IMAGE=curlimages/curl:8.11.1
MODEL=e2e-small # the alias the ProviderRoute below gives the fake's "demo-small"

step() { printf '\n==> %s\n' "$*"; }
fail() {
    printf 'FAIL: %s\n' "$*" >&2
    exit 1
}

# ---- prerequisites: skip honestly instead of pretending ----
missing=()
for tool in docker kind kubectl helm; do
    command -v "$tool" > /dev/null 2>&1 || missing+=("$tool")
done
if ((${#missing[@]})); then
    echo "SKIPPED: kind e2e needs docker, kind, kubectl and helm; missing from PATH: ${missing[*]}"
    exit 0
fi
if ! docker info > /dev/null 2>&1; then
    echo "SKIPPED: kind e2e needs a running Docker daemon; 'docker info' failed"
    exit 0
fi

[[ -f "$CHART/Chart.yaml" ]] || fail "no Helm chart at $CHART"

kc() { kubectl --context "kind-$CLUSTER" --namespace "$NAMESPACE" "$@"; }

teardown() {
    local status=$?
    if ((status != 0)); then
        echo "---- diagnostics (exit $status) ----" >&2
        kc get pods,svc,providercredentials,providerroutes -o wide >&2 || true
        kc logs --tail=50 -l app=e2e-fake-upstream >&2 || true
        kc get events --sort-by=.lastTimestamp >&2 || true
    fi
    if [[ "$KEEP_CLUSTER" == 1 ]]; then
        echo "KEEP_CLUSTER=1: leaving kind cluster '$CLUSTER' up (delete it with: kind delete cluster --name $CLUSTER)"
    else
        step "Tearing down kind cluster '$CLUSTER'"
        kind delete cluster --name "$CLUSTER" || true
    fi
    exit "$status"
}

# Run curl inside the cluster (the curl pod), against the proxy's ClusterIP Service unless a full URL is given.
incluster() { kc exec e2e-curl -- curl --silent --show-error --max-time 30 "$@"; }
proxy_url() { echo "http://${PROXY_SERVICE}.${NAMESPACE}.svc.cluster.local:${PROXY_PORT}$1"; }
auth=()
if [[ -n "$CLIENT_KEY" ]]; then auth=(-H "Authorization: Bearer $CLIENT_KEY"); fi

chat() { # chat STREAM(true|false) -> prints the HTTP status on the last line
    incluster --write-out '\n%{http_code}' ${auth[@]+"${auth[@]}"} -H 'Content-Type: application/json' \
        -d "{\"model\":\"$MODEL\",\"stream\":$1,\"messages\":[{\"role\":\"user\",\"content\":\"hello from kind\"}]}" \
        "$(proxy_url /v1/chat/completions)"
}

# wait_within LIMIT DESCRIPTION COMMAND...: retry COMMAND every second until it succeeds or LIMIT seconds pass.
wait_within() {
    local limit=$1 what=$2 deadline=$((SECONDS + $1))
    shift 2
    until "$@"; do
        ((SECONDS < deadline)) || fail "timed out after ${limit}s waiting for: $what"
        sleep 1
    done
}
# wait_until DESCRIPTION COMMAND...: the same, within TIMEOUT.
wait_until() { wait_within "$TIMEOUT" "$@"; }

step "Creating kind cluster '$CLUSTER'"
if kind get clusters 2> /dev/null | grep -qx "$CLUSTER"; then
    fail "a kind cluster named '$CLUSTER' already exists; delete it or set CLUSTER=..."
fi
trap teardown EXIT
kind create cluster --name "$CLUSTER" --wait 120s

step "Building images ${PROXY_IMAGE}:${TAG} and ${OPERATOR_IMAGE}:${TAG} (context: repo root)"
docker build -f "$REPO/deploy/docker/proxy.Dockerfile" -t "${PROXY_IMAGE}:${TAG}" "$REPO"
docker build -f "$REPO/deploy/docker/operator.Dockerfile" -t "${OPERATOR_IMAGE}:${TAG}" "$REPO"

step "Loading images into kind"
kind load docker-image --name "$CLUSTER" "${PROXY_IMAGE}:${TAG}" "${OPERATOR_IMAGE}:${TAG}"

step "Installing Helm chart $CHART as release '$RELEASE' in namespace '$NAMESPACE'"
# The chart may take one image per component (image.proxy.*, image.operator.*) or one shared image (image.*) that
# runs both entry points; the shared one must be the operator image, the only one with kopf and kubernetes.
image_keys=$(awk '/^image:/ {f = 1; next} /^[^ #]/ {f = 0} f && /^  [A-Za-z]+:/ {sub(/:.*/, ""); print $1}' \
    "$CHART/values.yaml")
if grep -qx proxy <<< "$image_keys"; then
    image_values=(--set image.proxy.repository="$PROXY_IMAGE" --set image.proxy.tag="$TAG"
        --set image.operator.repository="$OPERATOR_IMAGE" --set image.operator.tag="$TAG")
else
    echo "chart takes one shared image (image.repository/tag): using ${OPERATOR_IMAGE}:${TAG} for both components"
    image_values=(--set image.repository="$OPERATOR_IMAGE" --set image.tag="$TAG")
fi
# No --wait: the proxy pods stay not ready (/readyz 503) until the operator renders a first config, which needs the
# ProviderRoute applied below. Wait for the operator here and for the proxy once it serves the model.
helm install "$RELEASE" "$CHART" --kube-context "kind-$CLUSTER" --namespace "$NAMESPACE" --create-namespace \
    "${image_values[@]}"
kc wait --for=condition=Available deployment \
    -l "app.kubernetes.io/instance=$RELEASE,app.kubernetes.io/component=operator" --timeout "${TIMEOUT}s"
for crd in providercredentials.cliproxy.io providerroutes.cliproxy.io clientkeys.cliproxy.io; do
    kc get crd "$crd" > /dev/null || fail "the chart did not install CRD $crd"
    kubectl --context "kind-$CLUSTER" wait --for=condition=Established "crd/$crd" --timeout "${TIMEOUT}s"
done
kc get service "$PROXY_SERVICE" > /dev/null || fail "no proxy Service '$PROXY_SERVICE' (set PROXY_SERVICE=...)"
proxy_args=$(kc get deployment -l "app.kubernetes.io/instance=$RELEASE,app.kubernetes.io/component=proxy" \
    -o jsonpath='{.items[*].spec.template.spec.containers[*].args}')
grep -q -- '--kube-name=' <<< "$proxy_args" || fail "the proxy does not use the API source (no --kube-name): $proxy_args"

step "Deploying the in-cluster fake upstream (cliproxy-demo-upstream, accepts demo-key-1 and demo-key-2)"
kc apply -f - << EOF
apiVersion: apps/v1
kind: Deployment
metadata:
  name: e2e-fake-upstream
spec:
  replicas: 1
  selector:
    matchLabels: {app: e2e-fake-upstream}
  template:
    metadata:
      labels: {app: e2e-fake-upstream}
    spec:
      containers:
        - name: upstream
          image: ${PROXY_IMAGE}:${TAG}
          imagePullPolicy: IfNotPresent
          command: ["cliproxy-demo-upstream"]
          args: ["--host", "0.0.0.0", "--port", "18080", "--key", "demo-key-1", "--key", "demo-key-2"]
          ports: [{containerPort: 18080}]
          readinessProbe:
            tcpSocket: {port: 18080}
            periodSeconds: 2
---
apiVersion: v1
kind: Service
metadata:
  name: e2e-fake-upstream
spec:
  selector: {app: e2e-fake-upstream}
  ports: [{port: 18080, targetPort: 18080}]
---
apiVersion: v1
kind: Pod
metadata:
  name: e2e-curl
spec:
  containers:
    - name: curl
      image: ${CURL_IMAGE}
      command: ["sleep", "3600"]
EOF
kc rollout status deployment/e2e-fake-upstream --timeout "${TIMEOUT}s"
kc wait --for=condition=Ready pod/e2e-curl --timeout "${TIMEOUT}s"

step "Applying Secret, ProviderCredential (openai-compatibility -> fake) and ProviderRoute"
kc apply -f - << 'EOF'
apiVersion: v1
kind: Secret
metadata:
  name: e2e-upstream-key
  labels:
    cliproxy.io/credential: "true"  # the Secret's owner lets it back a ProviderCredential
type: Opaque
stringData:
  key: demo-key-1
---
apiVersion: cliproxy.io/v1alpha1
kind: ProviderCredential
metadata:
  name: e2e-fake
spec:
  provider: openai-compatibility
  baseURL: http://e2e-fake-upstream:18080/v1
  modelsEndpoint: /models
  apiKeys:
    - secretKeyRef: {name: e2e-upstream-key, key: key}
---
apiVersion: cliproxy.io/v1alpha1
kind: ProviderRoute
metadata:
  name: e2e
spec:
  gateway: default
  credentials:
    - name: e2e-fake
  models:
    - name: demo-small
      alias: e2e-small
EOF
kc create secret generic e2e-clients --from-literal=key="$CLIENT_KEY" --dry-run=client -o yaml \
    | kc label --local -f - cliproxy.io/client-keys-for=default -o yaml | kc apply -f -
kc wait --for=condition=Ready providercredential.cliproxy.io/e2e-fake --timeout "${TIMEOUT}s"
kc wait --for=condition=Ready providerroute.cliproxy.io/e2e --timeout "${TIMEOUT}s"

step "Waiting for the proxy to serve '$MODEL' (the operator's ConfigMap reaches the pods through the API watch)"
serves_model() { incluster ${auth[@]+"${auth[@]}"} "$(proxy_url /v1/models)" 2> /dev/null | grep -q "\"$MODEL\""; }
wait_until "proxy lists $MODEL" serves_model

step "Waiting for every pod of release '$RELEASE' to be Ready (operator and all proxy replicas)"
kc wait --for=condition=Ready pod -l "app.kubernetes.io/instance=$RELEASE" --timeout "${TIMEOUT}s"
kc get pods -l "app.kubernetes.io/instance=$RELEASE" -o wide

step "GET /v1/models"
incluster --fail ${auth[@]+"${auth[@]}"} "$(proxy_url /v1/models)"
echo

step "POST /v1/chat/completions (non-streaming)"
out=$(chat false)
echo "$out"
[[ "$(tail -n1 <<< "$out")" == 200 ]] || fail "chat completion did not return 200"
grep -q 'hello from kind' <<< "$out" || fail "chat completion did not echo the prompt"

step "POST /v1/chat/completions (stream)"
out=$(chat true)
echo "$out"
[[ "$(tail -n1 <<< "$out")" == 200 ]] || fail "streaming chat completion did not return 200"
grep -q '^data: ' <<< "$out" || fail "stream carried no SSE data lines"
grep -q 'data: \[DONE\]' <<< "$out" || fail "stream did not end with data: [DONE]"

step "GET /v1/metrics/providers (before rotation)"
incluster --fail ${auth[@]+"${auth[@]}"} "$(proxy_url /v1/metrics/providers)"
echo

# Rotation, honestly and promptly. First restart the fake so it accepts ONLY demo-key-2 (the fake is what restarts,
# never the proxy) while the Secret still holds demo-key-1; a direct request proves the fake refuses demo-key-1, so
# a proxied request that succeeds afterwards can only have carried the rotated key. Then point the Secret at
# demo-key-2 and start the clock: the operator re-renders cliproxy-default and the proxy's API watch applies it, so
# a proxied chat must succeed within ROTATION_TIMEOUT seconds (the kubelet's volume sync alone takes 1-2 minutes).
# Proxied attempts with the old key fail meanwhile; their cooldown is per key, so it cannot hold up the new one.
# The proxy pods' UIDs and restart counts must be unchanged.
step "Rotating the upstream key: fake upstream -> accepts demo-key-2 only; then Secret -> demo-key-2"
pods_before=$(kc get pods -l "app.kubernetes.io/instance=$RELEASE" -o \
    jsonpath='{range .items[*]}{.metadata.uid}:{range .status.containerStatuses[*]}{.restartCount},{end} {end}')
[[ -n "$pods_before" ]] || fail "no pods labelled app.kubernetes.io/instance=$RELEASE to watch for restarts"
kc patch deployment e2e-fake-upstream --type=json -p \
    '[{"op":"replace","path":"/spec/template/spec/containers/0/args","value":["--host","0.0.0.0","--port","18080","--key","demo-key-2"]}]'
kc rollout status deployment/e2e-fake-upstream --timeout "${TIMEOUT}s"

fake=http://e2e-fake-upstream.${NAMESPACE}.svc.cluster.local:18080/v1/models
old_status=$(incluster --output /dev/null --write-out '%{http_code}' -H 'Authorization: Bearer demo-key-1' "$fake")
new_status=$(incluster --output /dev/null --write-out '%{http_code}' -H 'Authorization: Bearer demo-key-2' "$fake")
echo "fake upstream: demo-key-1 -> $old_status, demo-key-2 -> $new_status"
[[ "$old_status" == 401 ]] || fail "the fake still accepts the old key (HTTP $old_status); the check would prove nothing"
[[ "$new_status" == 200 ]] || fail "the fake refuses the new key (HTTP $new_status)"

kc create secret generic e2e-upstream-key --from-literal=key=demo-key-2 --dry-run=client -o yaml \
    | kc label --local -f - cliproxy.io/credential=true -o yaml | kc apply -f -
rotated_at=$SECONDS

step "Expecting a proxied chat completion with the rotated key within ${ROTATION_TIMEOUT}s (no proxy restart)"
chat_ok() { [[ "$(chat false 2> /dev/null | tail -n1)" == 200 ]]; }
wait_within "$ROTATION_TIMEOUT" "a chat completion through the proxy with the rotated key" chat_ok
echo "the rotated key was in use $((SECONDS - rotated_at))s after the Secret changed"
pods_after=$(kc get pods -l "app.kubernetes.io/instance=$RELEASE" -o \
    jsonpath='{range .items[*]}{.metadata.uid}:{range .status.containerStatuses[*]}{.restartCount},{end} {end}')
echo "release pods before: $pods_before"
echo "release pods after:  $pods_after"
[[ "$pods_before" == "$pods_after" ]] || fail "release pods were replaced or restarted"

step "GET /v1/metrics/providers (after rotation)"
incluster --fail ${auth[@]+"${auth[@]}"} "$(proxy_url /v1/metrics/providers)"
echo

step "Scraping /metrics"
metrics=$(incluster --fail "$(proxy_url /metrics)")
grep -E '^cliproxy_' <<< "$metrics" | head -n 20
grep -q '^cliproxy_requests' <<< "$metrics" || fail "/metrics has no cliproxy_requests series"

step "PASSED: kind e2e"
