terraform {
  # 1.9 for validation rules that compare two variables (min_instances
  # against max_instances).
  required_version = ">= 1.9"

  required_providers {
    google = {
      source = "hashicorp/google"
      # 6.0 added deletion_protection to google_cloud_run_v2_service and made
      # its env a set; the 7.0 upgrade guide lists no change to this
      # resource. Review the 8.0 guide before widening the bound.
      version = ">= 6.0, < 8.0"
    }
  }
}
