//! Pre-flight: cheap reads that refuse a bake before anything billable exists,
//! and the spending summary shown (and confirmed) before the droplet is created.
//!
//! Requests: `GET /v2/account` (token works, account not locked, droplet
//! limit), `GET /v2/droplets` (how many exist), `GET /v2/sizes` (size offered in
//! the region, hourly price), one image lookup (`GET /v2/images/{id|slug}`, or
//! the private images when a name is given), and `GET /v2/projects` only when
//! the project is given by name.

use std::time::Duration;

use crate::spec::DigitalOcean;
use do_api::{Client, DoError, ImageSpec, Refusal, Size};

use super::{DoBakeError, api};

/// What a bake will create, resolved against the account.
#[derive(Clone, Debug)]
pub struct Plan {
    /// The base image for the create request.
    pub image: ImageSpec,
    /// How the image was found, for humans ("debian-12-x64 (id 100001)").
    pub image_label: String,
    /// The size (with prices).
    pub size: Size,
    /// Region slug.
    pub region: String,
    /// Project id, or `default`.
    pub project_id: String,
    /// Project name for humans.
    pub project_label: String,
    /// Droplets that exist now, and the account's limit.
    pub droplets: (usize, u64),
}

/// Run the pre-flight checks for `spec` with base image `base`.
pub async fn check(client: &Client, spec: &DigitalOcean, base: &str) -> Result<Plan, DoBakeError> {
    let account = match client.account().await {
        Ok(a) => a,
        Err(e) if e.status() == Some(401) || e.status() == Some(403) => {
            return Err(DoBakeError::Preflight(format!(
                "DigitalOcean refused the token ({e}); check DIGITALOCEAN_TOKEN or the --token-file, and that the token has read and write scopes"
            )));
        }
        Err(e) => return Err(api("reading the account")(e)),
    };
    if account.status == "locked" {
        return Err(DoBakeError::Preflight(format!(
            "the DigitalOcean account is locked: {}",
            account.status_message
        )));
    }
    let existing = client
        .list_droplets()
        .await
        .map_err(api("counting droplets"))?
        .len();
    if existing as u64 >= account.droplet_limit {
        return Err(DoBakeError::Preflight(format!(
            "droplet limit reached: {existing} droplets exist and the account allows {}; delete droplets \
             (`image-builder reap` removes builders left by earlier bakes) or ask DigitalOcean support to raise the limit",
            account.droplet_limit
        )));
    }
    let sizes = client.sizes().await.map_err(api("listing sizes"))?;
    let region = spec.region.clone();
    let Some(size) = sizes.iter().find(|s| s.slug == spec.size).cloned() else {
        let mut here: Vec<&Size> = sizes
            .iter()
            .filter(|s| s.available && s.regions.contains(&region))
            .collect();
        here.sort_by(|a, b| a.price_hourly.total_cmp(&b.price_hourly));
        return Err(DoBakeError::Preflight(format!(
            "digitalocean.size {:?} is not a DigitalOcean size; sizes offered in {region}: {}",
            spec.size,
            here.iter()
                .map(|s| s.slug.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    };
    if !size.available || !size.regions.contains(&region) {
        return Err(DoBakeError::Preflight(format!(
            "size {} is not offered in region {region} (DigitalOcean would refuse it: \"Size is not available in this region.\"); \
             it is offered in: {}. Pick another size or region in the spec's `digitalocean` section",
            size.slug,
            if size.regions.is_empty() {
                "no region".to_owned()
            } else {
                size.regions.join(", ")
            }
        )));
    }
    let (image, image_label) = resolve_image(client, base, &region).await?;
    let (project_id, project_label) = match spec.project.as_deref() {
        None => ("default".to_owned(), "the default project".to_owned()),
        Some(p) if looks_like_uuid(p) => (p.to_owned(), format!("project {p}")),
        Some(name) => {
            let projects = client
                .list_projects()
                .await
                .map_err(api("listing projects"))?;
            match projects.iter().find(|p| p.name == name) {
                Some(p) => (p.id.clone(), format!("project {:?} ({})", p.name, p.id)),
                None => {
                    return Err(DoBakeError::Preflight(format!(
                        "digitalocean.project {name:?} is neither a project id nor the name of a project; projects: {}",
                        projects
                            .iter()
                            .map(|p| format!("{:?}", p.name))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )));
                }
            }
        }
    };
    Ok(Plan {
        image,
        image_label,
        size,
        region,
        project_id,
        project_label,
        droplets: (existing, account.droplet_limit),
    })
}

fn looks_like_uuid(s: &str) -> bool {
    s.len() == 36
        && s.chars().enumerate().all(|(i, c)| {
            if [8, 13, 18, 23].contains(&i) {
                c == '-'
            } else {
                c.is_ascii_hexdigit()
            }
        })
}

/// `base.digitalocean`: a numeric id, a public slug, or the name of a private
/// image (the newest with that name: how golden images are layered).
async fn resolve_image(
    client: &Client,
    base: &str,
    region: &str,
) -> Result<(ImageSpec, String), DoBakeError> {
    let found = if let Ok(id) = base.parse::<u64>() {
        match client.get_image(id).await {
            Ok(i) => Some(i),
            Err(e) if e.is_not_found() => {
                return Err(DoBakeError::Preflight(format!(
                    "base.digitalocean: there is no image with id {id}"
                )));
            }
            Err(e) => return Err(api("looking up the base image")(e)),
        }
    } else {
        match client.get_image_by_ref(base).await {
            Ok(i) => Some(i),
            Err(e) if e.is_not_found() => None,
            Err(e) => return Err(api("looking up the base image")(e)),
        }
    };
    let (image, label) = match found {
        Some(i) if i.public => {
            let label = format!("{base} (id {})", i.id);
            (i, label)
        }
        Some(i) => {
            let label = format!("{:?} (id {})", i.name, i.id);
            (i, label)
        }
        None => match client
            .newest_image_named(base)
            .await
            .map_err(api("looking up the base image by name"))?
        {
            Some(i) => {
                let label = format!(
                    "{base:?}, newest of that name: id {} from {}",
                    i.id, i.created_at
                );
                (i, label)
            }
            None => {
                return Err(DoBakeError::Preflight(format!(
                    "base.digitalocean {base:?} is neither a public image slug nor the name of one of your images"
                )));
            }
        },
    };
    if !image.regions.is_empty() && !image.regions.iter().any(|r| r == region) {
        return Err(DoBakeError::Preflight(format!(
            "base image {label} is in region(s) {} but the bake runs in {region}: transfer the image there \
             (POST /v2/images/{}/actions type=transfer) or bake in one of its regions",
            image.regions.join(", "),
            image.id
        )));
    }
    // Public images are addressed by slug, private ones by id (DigitalOcean
    // refuses a private image's name in a create).
    let spec = match (&image.slug, image.public) {
        (Some(slug), true) => ImageSpec::Slug(slug.clone()),
        _ => ImageSpec::Id(image.id),
    };
    Ok((spec, label))
}

/// The spending summary, for stderr.
pub fn describe(
    plan: &Plan,
    droplet_name: &str,
    image_name: &str,
    bake_timeout: Duration,
) -> String {
    let hours = bake_timeout.as_secs_f64() / 3600.0;
    format!(
        "image-builder will create in DigitalOcean region {region}:\n\
         \x20 droplet   {droplet_name}: {size} ({vcpus} vCPU, {mem} MiB, {disk} GB disk), ${hourly:.5}/hour \
         (at most about ${worst:.2} if provisioning runs to its {timeout} timeout)\n\
         \x20 from      {image}\n\
         \x20 snapshot  {image_name} (billed per GB-month while it exists)\n\
         \x20 project   {project}\n\
         \x20 droplets  {now} of {limit} in use\n",
        region = plan.region,
        size = plan.size.slug,
        vcpus = plan.size.vcpus,
        mem = plan.size.memory,
        disk = plan.size.disk,
        hourly = plan.size.price_hourly,
        worst = plan.size.price_hourly * (hours + 1.0).ceil(),
        timeout = humantime::format_duration(bake_timeout),
        image = plan.image_label,
        project = plan.project_label,
        now = plan.droplets.0,
        limit = plan.droplets.1,
    )
}

/// Spending must be explicit: `--yes`, or a "y" typed on a terminal.
pub async fn confirm(yes: bool) -> Result<(), DoBakeError> {
    tokio::task::spawn_blocking(move || {
        super::confirm(
            yes,
            "Create these resources?",
            "create the resources shown above",
        )
    })
    .await
    .map_err(|e| DoBakeError::Internal(e.to_string()))?
}

/// Turn DigitalOcean's 422 refusals of a droplet create into advice. Which
/// refusal it is comes from [`DoError::refusal`] (DigitalOcean's own wordings,
/// matched in one place, `do-api`'s `error.rs`); DigitalOcean's message is
/// quoted as it came.
pub fn explain_create_refusal(e: &DoError, size: &str, region: &str) -> Option<String> {
    let refusal = e.refusal()?;
    let DoError::Api { message, .. } = e else {
        return None;
    };
    Some(match refusal {
        Refusal::SizeRestricted => format!(
            "DigitalOcean refused size {size} for this account ({message}): choose another size in the spec \
             (digitalocean.size) or open a support ticket to unlock it"
        ),
        Refusal::DropletLimit => format!(
            "DigitalOcean refused the droplet: the account's droplet limit is reached ({message}); delete droplets \
             (`image-builder reap` removes builders left by earlier bakes) or ask support to raise the limit"
        ),
        Refusal::SizeNotInRegion | Refusal::RegionNotAvailable => format!(
            "DigitalOcean refused size {size} in region {region} ({message}): choose another size or region in the spec"
        ),
        Refusal::InvalidSize => format!(
            "DigitalOcean does not know size {size} ({message}): choose a size listed by GET /v2/sizes in the spec \
             (digitalocean.size)"
        ),
        Refusal::InvalidImage => format!(
            "DigitalOcean refused the base image ({message}): a private image must be given by id or by its exact name"
        ),
        Refusal::ImageNotInRegion => format!(
            "DigitalOcean refused the base image in region {region} ({message}): transfer the image there \
             or bake in one of its regions"
        ),
        Refusal::PendingEvent
        | Refusal::BlockingEvents
        | Refusal::AlreadyPoweredOff
        | Refusal::Other => format!("DigitalOcean refused the droplet ({message})"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_detection() {
        assert!(looks_like_uuid("6b5d6e0a-7c1b-4f0e-9a3e-2f6c1d0a0001"));
        assert!(!looks_like_uuid("image-builder"));
        assert!(!looks_like_uuid("6b5d6e0a-7c1b-4f0e-9a3e-2f6c1d0a000z"));
    }

    #[test]
    fn refusals_are_explained() {
        let e = |m: &str| DoError::Api {
            method: "POST".into(),
            path: "/v2/droplets".into(),
            status: 422,
            id: "unprocessable_entity".into(),
            message: m.into(),
            request_id: None,
        };
        // DigitalOcean's own wordings (sources in do-api's `Refusal`).
        let r = explain_create_refusal(
            &e("This size is currently restricted please send an additional payment to unlock."),
            "g-2vcpu-8gb",
            "nyc3",
        )
        .expect("422");
        assert!(
            r.contains("support ticket") && r.contains("g-2vcpu-8gb"),
            "{r}"
        );
        let r = explain_create_refusal(
            &e("creating this/these droplet(s) will exceed your droplet limit"),
            "s",
            "r",
        )
        .expect("422");
        assert!(r.contains("reap"), "{r}");
        for m in [
            "Size is not available in this region.",
            "Region is not available",
        ] {
            let r = explain_create_refusal(&e(m), "s-4vcpu-8gb", "sgp1").expect("422");
            assert!(
                r.contains("sgp1") && r.contains("another size or region") && r.contains(m),
                "{r}"
            );
        }
        let r = explain_create_refusal(
            &e("You specified an invalid image for Droplet creation."),
            "s",
            "r",
        )
        .expect("422");
        assert!(r.contains("by id or by its exact name"), "{r}");
        let r = explain_create_refusal(
            &e("You specified an invalid size for Droplet creation."),
            "s-9vcpu",
            "r",
        )
        .expect("422");
        assert!(r.contains("GET /v2/sizes") && r.contains("s-9vcpu"), "{r}");
        // Our own old sentence is not DigitalOcean's: no specific advice for it.
        let r = explain_create_refusal(
            &e("This size is restricted for your account. Open a support ticket."),
            "s",
            "r",
        )
        .expect("422");
        assert!(!r.contains("support ticket to unlock"), "{r}");
        // Not a 422 unprocessable_entity: nothing to explain.
        let other = DoError::Api {
            method: "POST".into(),
            path: "/v2/droplets".into(),
            status: 500,
            id: "server_error".into(),
            message: "creating this/these droplet(s) will exceed your droplet limit".into(),
            request_id: None,
        };
        assert!(explain_create_refusal(&other, "s", "r").is_none());
    }
}
