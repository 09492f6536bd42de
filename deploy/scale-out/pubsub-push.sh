#!/usr/bin/env bash
# A Pub/Sub topic whose messages are pushed to memgate on Cloud Run, with a
# retry policy and a dead-letter topic. See README.md beside this file for
# why each setting has its value.
#
#   PROJECT_ID=my-project \
#   MEMGATE_URL=https://memgate-....run.app \
#   INVOKER_SA=push-invoker@my-project.iam.gserviceaccount.com \
#     deploy/scale-out/pubsub-push.sh
#
# INVOKER_SA needs roles/run.invoker on the memgate service; whoever runs
# this needs iam.serviceAccounts.actAs on INVOKER_SA.
set -euo pipefail

: "${PROJECT_ID:?set PROJECT_ID to the project ID}"
: "${MEMGATE_URL:?set MEMGATE_URL to the service URL}"
: "${INVOKER_SA:?set INVOKER_SA to a service account allowed to invoke memgate}"
TOPIC="${TOPIC:-memgate-images}"
DEAD_TOPIC="${DEAD_TOPIC:-${TOPIC}-dead}"
SUBSCRIPTION="${SUBSCRIPTION:-${TOPIC}-push}"

gcloud pubsub topics create "$TOPIC" "$DEAD_TOPIC" --project="$PROJECT_ID"

# --push-no-wrapper: the message data (the image) is the request's body,
# as POST /v1/transcode expects, instead of a JSON envelope with the data
# in base64. The query string carries the transcoding parameters.
#
# --ack-deadline=150: for push, the ack deadline is the request timeout.
# It equals the Cloud Run service's timeoutSeconds, the longest memgate
# holds a request; a shorter one would redeliver messages still at work.
#
# --min/max-retry-delay: the retry policy sets the delay between two
# deliveries of a message; memgate's Retry-After spans 1 to 60 s, and so
# does the policy.
#
# --max-delivery-attempts=20: every status but 102, 200, 201, 202 and 204
# is redelivered, memgate's permanent errors (400, 413, 415, 422) as much
# as its refusals (503). After 20 attempts a message goes to the
# dead-letter topic instead of being retried for the whole retention.
gcloud pubsub subscriptions create "$SUBSCRIPTION" \
  --project="$PROJECT_ID" \
  --topic="$TOPIC" \
  --push-endpoint="${MEMGATE_URL}/v1/transcode?width=1024&format=webp" \
  --push-auth-service-account="$INVOKER_SA" \
  --push-auth-token-audience="$MEMGATE_URL" \
  --push-no-wrapper \
  --ack-deadline=150 \
  --min-retry-delay=1s \
  --max-retry-delay=60s \
  --dead-letter-topic="$DEAD_TOPIC" \
  --max-delivery-attempts=20

# Dead-lettered messages are kept on a pull subscription for inspection.
gcloud pubsub subscriptions create "${DEAD_TOPIC}-keep" \
  --project="$PROJECT_ID" \
  --topic="$DEAD_TOPIC"

# Pub/Sub's own service agent moves messages to the dead-letter topic: it
# must be allowed to publish there and to acknowledge on the subscription.
project_number="$(gcloud projects describe "$PROJECT_ID" \
  --format='value(projectNumber)')"
agent="serviceAccount:service-${project_number}@gcp-sa-pubsub.iam.gserviceaccount.com"
gcloud pubsub topics add-iam-policy-binding "$DEAD_TOPIC" \
  --project="$PROJECT_ID" --member="$agent" --role=roles/pubsub.publisher
gcloud pubsub subscriptions add-iam-policy-binding "$SUBSCRIPTION" \
  --project="$PROJECT_ID" --member="$agent" --role=roles/pubsub.subscriber
