//! Account, sizes, regions, images, snapshots, projects, tags and ssh keys.

use reqwest::Method;
use serde::Deserialize;
use serde_json::json;

use super::client::{Client, Idempotency};
use super::error::DoError;
use super::models::{
    Account, AssignedResource, Image, ImageUpdate, Project, Region, Size, Snapshot, SshKey, Tag,
    TagTarget,
};

#[derive(Deserialize)]
struct AccountEnvelope {
    account: Account,
}
#[derive(Deserialize)]
struct ImageEnvelope {
    image: Image,
}
#[derive(Deserialize)]
struct ProjectEnvelope {
    project: Project,
}
#[derive(Deserialize)]
struct ResourcesEnvelope {
    resources: Vec<AssignedResource>,
}
#[derive(Deserialize)]
struct TagEnvelope {
    tag: Tag,
}
#[derive(Deserialize)]
struct SshKeyEnvelope {
    ssh_key: SshKey,
}

impl Client {
    /// `GET /v2/account`: also the cheapest "does the token work" check.
    pub async fn account(&self) -> Result<Account, DoError> {
        Ok(self
            .get::<AccountEnvelope>("/v2/account", &[])
            .await?
            .account)
    }

    pub async fn sizes(&self) -> Result<Vec<Size>, DoError> {
        self.get_all("/v2/sizes", &[], "sizes").await
    }

    pub async fn regions(&self) -> Result<Vec<Region>, DoError> {
        self.get_all("/v2/regions", &[], "regions").await
    }

    /// The account's private images (snapshots, backups, custom), all pages.
    pub async fn list_private_images(&self) -> Result<Vec<Image>, DoError> {
        self.get_all("/v2/images", &[("private", "true".to_owned())], "images")
            .await
    }

    /// Private images named exactly `name`, newest first.
    pub async fn images_named(&self, name: &str) -> Result<Vec<Image>, DoError> {
        let mut found: Vec<Image> = self
            .list_private_images()
            .await?
            .into_iter()
            .filter(|i| i.name == name)
            .collect();
        sort_newest_first(&mut found);
        Ok(found)
    }

    /// The newest private image named exactly `name`.
    pub async fn newest_image_named(&self, name: &str) -> Result<Option<Image>, DoError> {
        Ok(self.images_named(name).await?.into_iter().next())
    }

    /// Private images whose name starts with `prefix`, newest first.
    pub async fn images_with_prefix(&self, prefix: &str) -> Result<Vec<Image>, DoError> {
        let mut found: Vec<Image> = self
            .list_private_images()
            .await?
            .into_iter()
            .filter(|i| i.name.starts_with(prefix))
            .collect();
        sort_newest_first(&mut found);
        Ok(found)
    }

    pub async fn get_image(&self, id: u64) -> Result<Image, DoError> {
        Ok(self
            .get::<ImageEnvelope>(&format!("/v2/images/{id}"), &[])
            .await?
            .image)
    }

    /// `GET /v2/images/{id_or_slug}`: a public image by slug, or any image by id.
    pub async fn get_image_by_ref(&self, id_or_slug: &str) -> Result<Image, DoError> {
        Ok(self
            .get::<ImageEnvelope>(&format!("/v2/images/{id_or_slug}"), &[])
            .await?
            .image)
    }

    /// `PUT /v2/images/{id}` (name, distribution, description).
    pub async fn update_image(&self, id: u64, update: &ImageUpdate) -> Result<Image, DoError> {
        let env: ImageEnvelope = self
            .write(
                Method::PUT,
                &format!("/v2/images/{id}"),
                update,
                Idempotency::Idempotent,
            )
            .await?;
        Ok(env.image)
    }

    pub async fn delete_image(&self, id: u64) -> Result<(), DoError> {
        self.write_no_content::<()>(
            Method::DELETE,
            &format!("/v2/images/{id}"),
            None,
            Idempotency::Idempotent,
        )
        .await
    }

    /// `GET /v2/snapshots?resource_type=droplet` (ids are strings there).
    pub async fn list_droplet_snapshots_all(&self) -> Result<Vec<Snapshot>, DoError> {
        self.get_all(
            "/v2/snapshots",
            &[("resource_type", "droplet".to_owned())],
            "snapshots",
        )
        .await
    }

    pub async fn delete_snapshot(&self, id: &str) -> Result<(), DoError> {
        self.write_no_content::<()>(
            Method::DELETE,
            &format!("/v2/snapshots/{id}"),
            None,
            Idempotency::Idempotent,
        )
        .await
    }

    pub async fn list_projects(&self) -> Result<Vec<Project>, DoError> {
        self.get_all("/v2/projects", &[], "projects").await
    }

    pub async fn default_project(&self) -> Result<Project, DoError> {
        Ok(self
            .get::<ProjectEnvelope>("/v2/projects/default", &[])
            .await?
            .project)
    }

    /// Assign resources (URNs such as `do:droplet:123`) to a project. Images
    /// cannot be assigned (the contract's URN pattern has no image kind).
    pub async fn assign_to_project(
        &self,
        project_id: &str,
        urns: &[String],
    ) -> Result<Vec<AssignedResource>, DoError> {
        let env: ResourcesEnvelope = self
            .write(
                Method::POST,
                &format!("/v2/projects/{project_id}/resources"),
                &json!({"resources": urns}),
                Idempotency::Idempotent,
            )
            .await?;
        Ok(env.resources)
    }

    /// `POST /v2/tags` (creating an existing tag is harmless, so it is retried).
    pub async fn create_tag(&self, name: &str) -> Result<Tag, DoError> {
        let env: TagEnvelope = self
            .write(
                Method::POST,
                "/v2/tags",
                &json!({"name": name}),
                Idempotency::Idempotent,
            )
            .await?;
        Ok(env.tag)
    }

    /// `POST /v2/tags/{tag}/resources`.
    pub async fn tag_resources(&self, tag: &str, targets: &[TagTarget]) -> Result<(), DoError> {
        let resources: Vec<serde_json::Value> = targets
            .iter()
            .map(|t| match t {
                TagTarget::Droplet(id) => {
                    json!({"resource_id": id.to_string(), "resource_type": "droplet"})
                }
                TagTarget::Image(id) => {
                    json!({"resource_id": id.to_string(), "resource_type": "image"})
                }
            })
            .collect();
        self.write_no_content(
            Method::POST,
            &format!("/v2/tags/{tag}/resources"),
            Some(&json!({"resources": resources})),
            Idempotency::Idempotent,
        )
        .await
    }

    pub async fn list_ssh_keys(&self) -> Result<Vec<SshKey>, DoError> {
        self.get_all("/v2/account/keys", &[], "ssh_keys").await
    }

    /// `POST /v2/account/keys`; not retried after an unknown outcome (a
    /// second try would answer 422 "already in use").
    pub async fn create_ssh_key(&self, name: &str, public_key: &str) -> Result<SshKey, DoError> {
        let env: SshKeyEnvelope = self
            .write(
                Method::POST,
                "/v2/account/keys",
                &json!({"name": name, "public_key": public_key}),
                Idempotency::Once,
            )
            .await?;
        Ok(env.ssh_key)
    }

    pub async fn delete_ssh_key(&self, id: u64) -> Result<(), DoError> {
        self.write_no_content::<()>(
            Method::DELETE,
            &format!("/v2/account/keys/{id}"),
            None,
            Idempotency::Idempotent,
        )
        .await
    }
}

fn sort_newest_first(images: &mut [Image]) {
    images.sort_by(|a, b| {
        b.created_at_time()
            .cmp(&a.created_at_time())
            .then(b.id.cmp(&a.id))
    });
}
