# A fleet of image-builder workers declared in Terraform.
#
# The user-data comes from `image-builder fleet user-data SPEC --name NAME -o user-data.yaml`:
# vm-agent's config, its 0600 secrets (the workers' own delete-scoped token, never the
# host's), the fleet's SSH identity and a host key that image-builder pinned for NAME-*.
# Name the droplets NAME-1, NAME-2, … so `image-builder fleet ssh NAME-1` finds the pin.

terraform {
  required_version = ">= 1.5"
  required_providers {
    digitalocean = {
      source  = "digitalocean/digitalocean"
      version = "~> 2.40"
    }
  }
}

data "digitalocean_image" "golden" {
  name = var.image_name
}

resource "digitalocean_droplet" "worker" {
  count     = var.workers
  name      = "${var.fleet}-${count.index + 1}"
  image     = data.digitalocean_image.golden.id
  region    = var.region
  size      = var.size
  user_data = file(var.user_data_file)
  tags = [
    "image-builder",
    "image-builder-fleet-${var.fleet}",
    var.ephemeral_tag,
  ]
}

resource "digitalocean_project_resources" "fleet" {
  count     = var.project_id == null ? 0 : 1
  project   = var.project_id
  resources = digitalocean_droplet.worker[*].urn
}
