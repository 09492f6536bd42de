# memgate as a Cloud Run service: the same settings as
# deploy/cloudrun/service.yaml, with memory, ceiling, concurrency and scaling
# as variables.
#
#   terraform init
#   terraform apply -var project=my-project -var region=europe-west1 \
#     -var image=europe-west1-docker.pkg.dev/my-project/memgate/memgate:TAG
#
# Manage the service with this or with deploy.yml's
# `gcloud run services replace`, not both: each would undo the other's
# image and settings on its next run.

provider "google" {
  project = var.project
  region  = var.region
}

locals {
  # The timeouts and queue bounds the request timeout is derived from; they
  # are also passed to memgate below, so the two cannot drift apart.
  body_timeout_ms = 60000
  max_wait_ms     = 10000
  job_timeout_ms  = 60000
  max_queue       = 64

  # Longest request memgate holds open: the upload, the waits for memory
  # and a run slot, the job, plus 20 s to send the result (150 s with the
  # values above). Below that Cloud Run would answer 504 while the job runs.
  held_ms           = local.body_timeout_ms + local.max_wait_ms + local.job_timeout_ms
  request_timeout_s = local.held_ms / 1000 + 20

  # memgate's sizes are written 2GiB, Cloud Run's 2Gi.
  memory_limit = replace(replace(var.memory, "Gi", "GiB"), "Mi", "MiB")

  service_env = {
    MEMGATE__LOG__FORMAT           = "json"
    MEMGATE__MEMORY__CEILING_RATIO = tostring(var.ceiling_ratio)
    # Used only if no cgroup limit is detected (the gen2 cgroup layout is
    # not documented): memgate then still steers under the real limit.
    MEMGATE__MEMORY__FALLBACK_LIMIT  = local.memory_limit
    MEMGATE__GATE__MAX_QUEUE         = tostring(local.max_queue)
    MEMGATE__GATE__MAX_WAIT_MS       = tostring(local.max_wait_ms)
    MEMGATE__SERVER__BODY_TIMEOUT_MS = tostring(local.body_timeout_ms)
    MEMGATE__SERVER__JOB_TIMEOUT_MS  = tostring(local.job_timeout_ms)
    # Cloud Run sends SIGKILL 10 s after SIGTERM.
    MEMGATE__SERVER__GRACE_PERIOD_MS = "8000"
    # The load-test job allocates what the caller asks; not for a public
    # service.
    MEMGATE__SERVER__SYNTHETIC = "false"
    # Qualifies trace ids in the logs so Cloud Logging links them.
    GOOGLE_CLOUD_PROJECT = var.project
  }
}

resource "google_cloud_run_v2_service" "memgate" {
  name     = var.service_name
  location = var.region

  # Terraform refuses to destroy or replace the service until this is set
  # to false and applied.
  deletion_protection = true

  template {
    # Pinned: the controller steers by the container's cgroup, which the
    # first generation (gVisor) may not provide.
    execution_environment = "EXECUTION_ENVIRONMENT_GEN2"

    max_instance_request_concurrency = var.concurrency
    timeout                          = "${local.request_timeout_s}s"

    scaling {
      min_instance_count = var.min_instances
      max_instance_count = var.max_instances
    }

    containers {
      image = var.image

      ports {
        name           = "http1"
        container_port = 8080
      }

      resources {
        limits = {
          cpu    = "2"
          memory = var.memory
        }
        # Request-based billing: CPU only while requests are in flight,
        # which suits POST /v1/transcode (the job runs inside its request).
        # Work started by POST /v1/jobs runs after the 202 and is starved
        # of CPU here: set false (instance-based billing) to serve it.
        # Must be set explicitly once a resources block exists.
        cpu_idle = true
        # memgate's start-up has nothing CPU-heavy to shorten.
        startup_cpu_boost = false
      }

      dynamic "env" {
        for_each = local.service_env
        content {
          name  = env.key
          value = env.value
        }
      }

      # Ready once memgate has chosen its ceiling and is listening.
      startup_probe {
        period_seconds    = 1
        timeout_seconds   = 1
        failure_threshold = 10
        http_get {
          path = "/readyz"
          port = 8080
        }
      }

      # Answers while the process lives, also on busy cores (job threads
      # run at server.job_nice 10).
      liveness_probe {
        period_seconds    = 10
        timeout_seconds   = 2
        failure_threshold = 3
        http_get {
          path = "/healthz"
          port = 8080
        }
      }
    }
  }
}
