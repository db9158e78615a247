// The rbd: origin URI parser and the CEPH_ARGS user lookup.
#include "origin/rbd_uri.h"

#include <gtest/gtest.h>

namespace rbdcache {
namespace {

TEST(RbdUriTest, PoolAndImageParse) {
  auto u = parse_rbd_uri("rbd:rbd/vm1");
  ASSERT_TRUE(u.is_ok()) << u.status().to_string();
  EXPECT_EQ(u->pool, "rbd");
  EXPECT_EQ(u->name_space, "");
  EXPECT_EQ(u->image, "vm1");
  EXPECT_EQ(u->spec(), "rbd/vm1");
  EXPECT_EQ(u->to_string(), "rbd:rbd/vm1");
}

TEST(RbdUriTest, PoolNamespaceAndImageParse) {
  auto u = parse_rbd_uri("rbd:volumes/tenant-a/disk.0");
  ASSERT_TRUE(u.is_ok()) << u.status().to_string();
  EXPECT_EQ(u->pool, "volumes");
  EXPECT_EQ(u->name_space, "tenant-a");
  EXPECT_EQ(u->image, "disk.0");
  EXPECT_EQ(u->to_string(), "rbd:volumes/tenant-a/disk.0");
}

TEST(RbdUriTest, OtherSchemesAreRejected) {
  for (const char* s : {"file:/x", "rbd/vm1", "RBD:rbd/vm1", "", "rbd"}) {
    auto u = parse_rbd_uri(s);
    EXPECT_FALSE(u.is_ok()) << s;
    EXPECT_EQ(u.status().err(), EINVAL) << s;
  }
}

TEST(RbdUriTest, MissingPartsAreRejectedWithTheExpectedForm) {
  for (const char* s : {"rbd:", "rbd:vm1", "rbd:/vm1", "rbd:rbd/", "rbd:rbd//vm1", "rbd:a/b/c/d"}) {
    auto u = parse_rbd_uri(s);
    ASSERT_FALSE(u.is_ok()) << s;
    EXPECT_NE(u.status().message().find("rbd:POOL/IMAGE"), std::string::npos) << u.status().message();
  }
}

TEST(RbdUriTest, EmptyPartIsNamed) {
  EXPECT_NE(parse_rbd_uri("rbd:/vm1").status().message().find("pool name is empty"), std::string::npos);
  EXPECT_NE(parse_rbd_uri("rbd:rbd/").status().message().find("image name is empty"), std::string::npos);
  EXPECT_NE(parse_rbd_uri("rbd:rbd//vm1").status().message().find("namespace name is empty"),
            std::string::npos);
}

TEST(RbdUriTest, SnapshotIsRejectedClearly) {
  auto u = parse_rbd_uri("rbd:rbd/vm1@snap1");
  ASSERT_FALSE(u.is_ok());
  EXPECT_NE(u.status().message().find("snapshot"), std::string::npos) << u.status().message();
}

TEST(RbdUriTest, AuthorityFormIsRejected) {
  auto u = parse_rbd_uri("rbd://rbd/vm1");
  ASSERT_FALSE(u.is_ok());
  EXPECT_NE(u.status().message().find("//"), std::string::npos) << u.status().message();
}

TEST(RbdUriTest, WhiteSpaceAndControlCharactersAreRejected) {
  EXPECT_FALSE(parse_rbd_uri("rbd:rbd/vm 1").is_ok());
  EXPECT_FALSE(parse_rbd_uri("rbd:rb\td/vm1").is_ok());
  EXPECT_FALSE(parse_rbd_uri(std::string_view("rbd:rbd/v\0m", 10)).is_ok());
}

TEST(RbdUriTest, ReservedPoolNameIsRejected) {
  auto u = parse_rbd_uri("rbd:.mgr/vm1");
  ASSERT_FALSE(u.is_ok());
  EXPECT_NE(u.status().message().find("reserves"), std::string::npos);
}

TEST(CephArgsClientIdTest, IdForms) {
  EXPECT_EQ(client_id_from_ceph_args("--id rbdcache --keyring /k"), "rbdcache");
  EXPECT_EQ(client_id_from_ceph_args("--keyring /k --id=vm1"), "vm1");
  EXPECT_EQ(client_id_from_ceph_args("--user  cinder"), "cinder");
  EXPECT_EQ(client_id_from_ceph_args("--user=glance"), "glance");
}

TEST(CephArgsClientIdTest, NameFormsNeedTheClientPrefix) {
  EXPECT_EQ(client_id_from_ceph_args("--name client.rbdcache"), "rbdcache");
  EXPECT_EQ(client_id_from_ceph_args("-n client.a"), "a");
  EXPECT_EQ(client_id_from_ceph_args("--name=client.b"), "b");
  EXPECT_EQ(client_id_from_ceph_args("--name osd.0"), "");
}

TEST(CephArgsClientIdTest, LastOneWins) {
  EXPECT_EQ(client_id_from_ceph_args("--id a --name client.b"), "b");
  EXPECT_EQ(client_id_from_ceph_args("--name client.b --id c"), "c");
}

TEST(CephArgsClientIdTest, NoUserGivesEmpty) {
  EXPECT_EQ(client_id_from_ceph_args(""), "");
  EXPECT_EQ(client_id_from_ceph_args("--keyring /k --ms_inject_delay_max=0.01"), "");
  EXPECT_EQ(client_id_from_ceph_args("--id"), "");  // a trailing --id without a value
}

}  // namespace
}  // namespace rbdcache
