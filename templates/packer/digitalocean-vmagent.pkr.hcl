# Bake a DigitalOcean snapshot with the vmagent provisioner (packer-plugin/).
#
#   export DIGITALOCEAN_API_TOKEN=...   # read by the builder; never in this file or on a command line
#   packer build -var agent_path=../../target/release/vm-agent \
#                -var agent_config=./vm-agent.toml digitalocean-vmagent.pkr.hcl
#
# Packer 1.6.6 (Debian): put the plugin next to this file or in PACKER_PLUGIN_PATH as
# `packer-provisioner-vmagent`. Packer 1.7+: install `packer-plugin-vmagent` (see
# packer-plugin/README.md); the provisioner type is `vmagent` in both cases.

variable "agent_path" {
  type        = string
  description = "Local path of the vm-agent binary to install."
}

variable "agent_config" {
  type        = string
  description = "Local path of the vm-agent config.toml baked into the image (no secrets)."
}

variable "region" {
  type    = string
  default = "fra1"
}

variable "size" {
  type    = string
  default = "s-1vcpu-1gb"
}

variable "base_image" {
  type    = string
  default = "debian-12-x64"
}

# The token comes from DIGITALOCEAN_API_TOKEN (read by the builder itself).
source "digitalocean" "golden" {
  image         = var.base_image
  region        = var.region
  size          = var.size
  ssh_username  = "root"
  snapshot_name = "vm-agent-golden-{{timestamp}}"
  tags          = ["vm-agent", "golden"]
}

build {
  sources = ["source.digitalocean.golden"]

  provisioner "vmagent" {
    # Bounded wait for the base image's own cloud-init run (from outside it).
    wait_for_cloud_init = true
    cloud_init_timeout  = "15m"

    # apt: DPkg::Lock::Timeout drop-in and a bounded wait for apt-daily et al.
    apt_lock_fix     = true
    apt_lock_timeout = "10m"
    wait_apt_idle    = true

    # Passwordless sudo for the build user, validated with `visudo -cf`.
    build_user = "builder"

    # Upload, check (sha256), install and enable vm-agent and its unit.
    agent_path   = var.agent_path
    agent_config = var.agent_config

    # Extra commands, run with `sh -eu` as root, before the seal.
    commands    = ["useradd --create-home --shell /bin/bash builder || true"]
    environment = { DEBIAN_FRONTEND = "noninteractive" }

    # Remove cloud-init state, logs, host keys and build leftovers before the snapshot.
    seal         = true
    step_timeout = "30m"
  }
}
