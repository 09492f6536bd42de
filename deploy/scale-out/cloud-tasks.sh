#!/usr/bin/env bash
# A Cloud Tasks queue that feeds memgate on Cloud Run, and one task on it.
# See README.md beside this file for why each setting has its value.
#
#   PROJECT_ID=my-project REGION=europe-west1 \
#   MEMGATE_URL=https://memgate-....run.app \
#   INVOKER_SA=tasks-invoker@my-project.iam.gserviceaccount.com \
#     deploy/scale-out/cloud-tasks.sh queue
#
#   ... deploy/scale-out/cloud-tasks.sh task photo.jpg
#
# INVOKER_SA needs roles/run.invoker on the memgate service; whoever runs
# this needs iam.serviceAccounts.actAs on INVOKER_SA.
set -euo pipefail

: "${PROJECT_ID:?set PROJECT_ID to the project ID}"
: "${REGION:?set REGION to the region of the queue}"
QUEUE="${QUEUE:-memgate-jobs}"

create_queue() {
  # Retries: memgate's Retry-After is 1 to 60 s, so the backoff starts at
  # 1 s and is capped at 60 s. A task is given up after 30 attempts and
  # 30 minutes, whichever comes last.
  #
  # Dispatches: 200 requests open at once is about what 10 instances
  # (maxScale) run plus a short queue each. More would only be refused,
  # after uploading their images for nothing; the tasks wait in Cloud Tasks
  # instead. The rate is left at a queue's most, 500/s: the concurrency cap
  # does the limiting.
  gcloud tasks queues create "$QUEUE" \
    --project="$PROJECT_ID" \
    --location="$REGION" \
    --max-concurrent-dispatches=200 \
    --max-dispatches-per-second=500 \
    --min-backoff=1s \
    --max-backoff=60s \
    --max-doublings=5 \
    --max-attempts=30 \
    --max-retry-duration=1800s
}

create_task() {
  local image="$1"
  : "${MEMGATE_URL:?set MEMGATE_URL to the service URL}"
  : "${INVOKER_SA:?set INVOKER_SA to a service account allowed to invoke memgate}"

  # The task's body is the image (a task holds at most 1 MB). The OIDC
  # token's audience is set to the service URL; left unset, it would be
  # the task's whole URL, query string included.
  gcloud tasks create-http-task \
    --project="$PROJECT_ID" \
    --location="$REGION" \
    --queue="$QUEUE" \
    --url="${MEMGATE_URL}/v1/transcode?width=1024&format=webp" \
    --method=POST \
    --header="Content-Type: application/octet-stream" \
    --body-file="$image" \
    --oidc-service-account-email="$INVOKER_SA" \
    --oidc-token-audience="$MEMGATE_URL"
}

case "${1:-}" in
  queue) create_queue ;;
  task) create_task "${2:?usage: $0 task IMAGE}" ;;
  *)
    echo "usage: $0 queue | task IMAGE" >&2
    exit 64
    ;;
esac
