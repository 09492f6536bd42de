variable "project" {
  description = "Google Cloud project ID that holds the service."
  type        = string

  validation {
    # Project IDs: 6 to 30 characters, lowercase letters, digits and
    # hyphens, starting with a letter and not ending with a hyphen.
    condition     = can(regex("^[a-z][a-z0-9-]{4,28}[a-z0-9]$", var.project))
    error_message = "project must be a project ID such as my-project-123, not a name or number."
  }
}

variable "region" {
  description = "Cloud Run region, for example europe-west1."
  type        = string

  validation {
    condition     = can(regex("^[a-z]+-[a-z]+[0-9]+$", var.region))
    error_message = "region must look like europe-west1 or us-central1."
  }
}

variable "service_name" {
  description = "Name of the Cloud Run service."
  type        = string
  default     = "memgate"

  validation {
    condition     = can(regex("^[a-z]([a-z0-9-]*[a-z0-9])?$", var.service_name))
    error_message = "service_name: lowercase letters, digits and hyphens; a letter first, no hyphen last."
  }
}

variable "image" {
  description = <<-EOT
    memgate's container image, with a tag or digest, for example
    europe-west1-docker.pkg.dev/my-project/memgate/memgate:3f2c1e0.
  EOT
  type        = string

  validation {
    # A tag or a digest: an untagged image means :latest, and a revision
    # should name the image it runs.
    condition     = can(regex("^[^\\s:@]+(/[^\\s:@]+)+(:[A-Za-z0-9_][A-Za-z0-9_.-]*|@sha256:[0-9a-f]{64})$", var.image))
    error_message = "image must be a registry path with a tag (:v1) or a digest (@sha256:...)."
  }
}

variable "memory" {
  description = <<-EOT
    Memory limit of an instance, in Cloud Run's units (Mi or Gi). memgate's
    ceiling is ceiling_ratio of it, and its fallback limit is set to it.
  EOT
  type        = string
  default     = "2Gi"

  validation {
    condition     = can(regex("^[1-9][0-9]*(Mi|Gi)$", var.memory))
    error_message = "memory must be a whole number of Mi or Gi, for example 2Gi or 4096Mi."
  }
}

variable "ceiling_ratio" {
  description = <<-EOT
    memory.ceiling_ratio: share of the instance's memory limit the working
    set is steered under. memgate refuses values outside (0, 1] at start-up.
  EOT
  type        = number
  default     = 0.92

  validation {
    condition     = var.ceiling_ratio > 0 && var.ceiling_ratio <= 1
    error_message = "ceiling_ratio must be above 0 and at most 1."
  }
}

variable "concurrency" {
  description = <<-EOT
    Most requests one instance receives at once
    (max_instance_request_concurrency). 80 covers the jobs memgate plans on
    2Gi (about 12 of 150 MiB) plus gate.max_queue (64) waiting.
  EOT
  type        = number
  default     = 80

  validation {
    condition = (
      var.concurrency >= 1 && var.concurrency <= 1000
      && floor(var.concurrency) == var.concurrency
    )
    error_message = "concurrency must be a whole number from 1 to 1000."
  }
}

variable "min_instances" {
  description = <<-EOT
    Instances kept running. 1 keeps one instance's learned job costs across
    bursts; 0 scales to zero.
  EOT
  type        = number
  default     = 1

  validation {
    condition     = var.min_instances >= 0 && floor(var.min_instances) == var.min_instances
    error_message = "min_instances must be a whole number, 0 or more."
  }
}

variable "max_instances" {
  description = "Most instances the autoscaler starts."
  type        = number
  default     = 10

  validation {
    condition = (
      var.max_instances >= 1 && floor(var.max_instances) == var.max_instances
      && var.max_instances >= var.min_instances
    )
    error_message = "max_instances must be a whole number, at least 1 and at least min_instances."
  }
}
