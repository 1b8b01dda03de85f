//! Which images of a service to remove: pure selection, unit-tested.

use std::collections::HashSet;

use crate::docker::ImageSummary;
use crate::registry::Repository;

/// The references (`repo@digest`, `repo:tag`) of an image that are `repository`'s.
/// Pruning removes only these: the same image may also be another service's.
pub fn references<'a>(image: &'a ImageSummary, repository: &Repository) -> Vec<&'a str> {
    let digests = image
        .repo_digests
        .iter()
        .filter_map(|d| d.split_once('@').map(|(r, _)| (r, d.as_str())));
    let tags = image.repo_tags.iter().filter_map(|t| {
        // The tag follows the last ':' after the last '/'.
        let slash = t.rfind('/').map(|i| i + 1).unwrap_or(0);
        t[slash..].rfind(':').map(|i| (&t[..slash + i], t.as_str()))
    });
    digests
        .chain(tags)
        .filter(|(repo, _)| &Repository::parse(repo) == repository)
        .map(|(_, reference)| reference)
        .collect()
}

/// Whether an image carries a tag or digest of `repository`.
pub fn belongs_to(image: &ImageSummary, repository: &Repository) -> bool {
    !references(image, repository).is_empty()
}

/// Images of `repository` to remove: of those the service's deployments ran
/// (`deployed`; a build not deployed yet, e.g. the next versions waiting on
/// this host with `pull = false`, is not greenlight's to remove), everything
/// beyond the newest `keep`, never an id in `protected` (the live image, the
/// one a rollback needs, images any container uses), and never one newer than
/// every protected image.
pub fn select<'a>(
    images: &'a [ImageSummary],
    repository: &Repository,
    keep: usize,
    protected: &HashSet<String>,
    deployed: &HashSet<String>,
) -> Vec<&'a ImageSummary> {
    let mut mine: Vec<&ImageSummary> = images
        .iter()
        .filter(|i| belongs_to(i, repository))
        .filter(|i| deployed.contains(&i.id) || protected.contains(&i.id))
        .collect();
    let newest_in_use = mine
        .iter()
        .filter(|i| protected.contains(&i.id))
        .map(|i| i.created)
        .max();
    // Docker's creation times are in seconds: one made in the same second as
    // the newest in use may be newer still, so it stays too.
    mine.retain(|i| protected.contains(&i.id) || newest_in_use.is_some_and(|n| i.created < n));
    mine.sort_by(|a, b| b.created.cmp(&a.created).then(a.id.cmp(&b.id)));
    let kept_protected = mine.iter().filter(|i| protected.contains(&i.id)).count();
    let mut room = keep.saturating_sub(kept_protected);
    mine.into_iter()
        .filter(|i| {
            if protected.contains(&i.id) {
                return false;
            }
            if room > 0 {
                room -= 1;
                return false;
            }
            true
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(id: &str, created: i64, refs: &[&str]) -> ImageSummary {
        ImageSummary {
            id: id.into(),
            repo_tags: refs
                .iter()
                .filter(|r| !r.contains('@'))
                .map(|s| s.to_string())
                .collect(),
            repo_digests: refs
                .iter()
                .filter(|r| r.contains('@'))
                .map(|s| s.to_string())
                .collect(),
            created,
        }
    }

    /// Every image was deployed once.
    fn all(images: &[ImageSummary]) -> HashSet<String> {
        images.iter().map(|i| i.id.clone()).collect()
    }

    #[test]
    fn images_no_deployment_ran_are_never_pruned() {
        let repo = Repository::parse("web");
        let images: Vec<ImageSummary> = (1..=4)
            .map(|n| image(&format!("i{n}"), n, &[&format!("web:v{n}")]))
            .collect();
        let protected: HashSet<String> = ["i4".to_string()].into();
        let deployed: HashSet<String> = ["i2".to_string(), "i4".to_string()].into();
        let ids: Vec<_> = select(&images, &repo, 1, &protected, &deployed)
            .iter()
            .map(|i| i.id.as_str())
            .collect();
        assert_eq!(ids, vec!["i2"], "i1 and i3 were never deployed");
    }

    #[test]
    fn keeps_the_newest_and_the_protected_and_never_other_repositories() {
        let repo = Repository::parse("127.0.0.1:5000/web");
        let images = vec![
            image("i1", 1, &["127.0.0.1:5000/web@sha256:1"]),
            image("i2", 2, &["127.0.0.1:5000/web@sha256:2"]),
            image("i3", 3, &["127.0.0.1:5000/web:v3"]),
            image("i4", 4, &["127.0.0.1:5000/web@sha256:4"]),
            image(
                "other",
                0,
                &["127.0.0.1:5000/api@sha256:9", "127.0.0.1:5000/webby:v1"],
            ),
        ];
        // live = i4, previous = i1 (a rollback target older than the rest).
        let protected: HashSet<String> = ["i4".to_string(), "i1".to_string()].into();
        let ids: Vec<_> = select(&images, &repo, 3, &protected, &all(&images))
            .iter()
            .map(|i| i.id.as_str())
            .collect();
        assert_eq!(ids, vec!["i2"]);
        let ids: Vec<_> = select(&images, &repo, 2, &protected, &all(&images))
            .iter()
            .map(|i| i.id.as_str())
            .collect();
        assert_eq!(ids, vec!["i3", "i2"]);
    }

    #[test]
    fn builds_newer_than_what_runs_are_never_pruned() {
        let repo = Repository::parse("web");
        let images: Vec<ImageSummary> = (1..=6)
            .map(|n| image(&format!("i{n}"), n, &[&format!("web:v{n}")]))
            .collect();
        // v2 is live: v3..v6 are built and wait to be deployed; v1 is older.
        let protected: HashSet<String> = ["i2".to_string()].into();
        let ids: Vec<_> = select(&images, &repo, 1, &protected, &all(&images))
            .iter()
            .map(|i| i.id.as_str())
            .collect();
        assert_eq!(ids, vec!["i1"]);
        // Built in the same second as the live one: maybe newer, kept.
        let mut same_second = images.clone();
        same_second.push(image("i7", 2, &["web:v7"]));
        let ids: Vec<_> = select(&same_second, &repo, 1, &protected, &all(&same_second))
            .iter()
            .map(|i| i.id.as_str())
            .collect();
        assert_eq!(ids, vec!["i1"]);
        // Nothing in use: nothing is known to be old.
        assert!(select(&images, &repo, 0, &HashSet::new(), &all(&images)).is_empty());
    }

    #[test]
    fn only_this_repositorys_references_are_pruned() {
        let repo = Repository::parse("127.0.0.1:5000/web");
        let shared = image(
            "i1",
            1,
            &[
                "127.0.0.1:5000/web@sha256:1",
                "127.0.0.1:5000/api@sha256:1",
                "127.0.0.1:5000/web:v1",
            ],
        );
        assert_eq!(
            references(&shared, &repo),
            vec!["127.0.0.1:5000/web@sha256:1", "127.0.0.1:5000/web:v1"]
        );
    }

    #[test]
    fn docker_hub_names_match_in_their_short_form() {
        let repo = Repository::parse("docker.io/library/nginx");
        assert!(belongs_to(&image("a", 1, &["nginx:1.25"]), &repo));
        assert!(belongs_to(&image("a", 1, &["nginx@sha256:1"]), &repo));
        assert!(!belongs_to(&image("a", 1, &["acme/nginx:1"]), &repo));
    }
}
