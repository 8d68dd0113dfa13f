variable "fleet" {
  description = "The fleet's name (droplets are named <fleet>-<n>; must match `fleet user-data --name`)."
  type        = string
}

variable "workers" {
  description = "How many workers."
  type        = number
  default     = 1
}

variable "image_name" {
  description = "Name of the golden image (a snapshot `image-builder bake --backend digitalocean` made)."
  type        = string
}

variable "region" {
  description = "Region slug; the golden image must be available there."
  type        = string
}

variable "size" {
  description = "Droplet size slug for the workers (independent of the bake's size)."
  type        = string
  default     = "s-2vcpu-4gb"
}

variable "user_data_file" {
  description = "Path of the file `image-builder fleet user-data` wrote (mode 0600: it holds the workers' secrets)."
  type        = string
}

variable "ephemeral_tag" {
  description = "The spec's agent.ephemeral_tag: the agent deletes only droplets carrying it."
  type        = string
  default     = "ephemeral"
}

variable "project_id" {
  description = "Project to put the workers in (a project of their own keeps a delete-scoped worker token away from other droplets' owners)."
  type        = string
  default     = null
}
