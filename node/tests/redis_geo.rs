//! GEO on real nodes with the stock `redis` client: points added through
//! one node are found through another, and GEOSEARCHSTORE's result is a
//! sorted set every node holds.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

#[tokio::test]
async fn points_added_through_one_node_are_searched_through_another() {
    let c = common::TestCluster::start(3).await;
    c.wait_voters().await;
    let (a, b) = (c.nodes[0].node.redis.local_addr(), c.nodes[2].node.redis.local_addr());
    let mut w = common::redis_client(a).await;
    let added: i64 = redis::cmd("GEOADD")
        .arg("Sicily")
        .arg(&["13.361389", "38.115556", "Palermo", "15.087269", "37.502669", "Catania"])
        .query_async(&mut w)
        .await
        .unwrap();
    assert_eq!(added, 2);

    let mut r = common::redis_client(b).await;
    let dist: String =
        redis::cmd("GEODIST").arg("Sicily").arg("Palermo").arg("Catania").arg("km").query_async(&mut r).await.unwrap();
    assert_eq!(dist, "166.2742");
    let near: Vec<(String, String)> = redis::cmd("GEOSEARCH")
        .arg("Sicily")
        .arg(&["FROMLONLAT", "15", "37", "BYRADIUS", "200", "km", "ASC", "WITHDIST"])
        .query_async(&mut r)
        .await
        .unwrap();
    assert_eq!(near, [("Catania".to_string(), "56.4413".to_string()), ("Palermo".to_string(), "190.4424".to_string())]);
    let pos: Vec<Option<(String, String)>> =
        redis::cmd("GEOPOS").arg("Sicily").arg("Palermo").arg("nowhere").query_async(&mut r).await.unwrap();
    assert_eq!(pos, [Some(("13.36138933897018433".to_string(), "38.11555639549629859".to_string())), None]);

    // A store through the follower goes through the log like any write.
    let stored: i64 = redis::cmd("GEOSEARCHSTORE")
        .arg("near")
        .arg("Sicily")
        .arg(&["FROMMEMBER", "Catania", "BYBOX", "100", "100", "km"])
        .query_async(&mut r)
        .await
        .unwrap();
    assert_eq!(stored, 1);
    let members: Vec<String> = redis::cmd("ZRANGE").arg("near").arg(0).arg(-1).query_async(&mut w).await.unwrap();
    assert_eq!(members, ["Catania"]);
}
