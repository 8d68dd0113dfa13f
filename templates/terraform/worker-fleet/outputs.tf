output "workers" {
  description = "Worker names and addresses."
  value       = { for d in digitalocean_droplet.worker : d.name => d.ipv4_address }
}
