output "url" {
  description = "URL the service answers on (private: callers need roles/run.invoker)."
  value       = google_cloud_run_v2_service.memgate.uri
}
