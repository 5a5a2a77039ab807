//! Raw categorical values to IDs: the vocabulary's order and out-of-vocabulary
//! bucket, the minimum count, and the stable hash against published FNV-1a vectors.

use mmoe_wgpu::data::categorical::*;

#[test]
fn fnv1a_64_matches_the_published_test_vectors() {
    // From the FNV reference (Noll): "", "a", "foobar".
    assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
    assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
    assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    // Integers hash their 8 little-endian bytes.
    assert_eq!(
        hash_bucket(0x6867_6665_6463_6261u64, u32::MAX),
        hash_bucket("abcdefgh", u32::MAX)
    );
    assert_eq!(fnv1a64(&42u64.to_le_bytes()), 0xff3a_dd6b_3789_daef);
    assert_eq!(hash_bucket(42u64, 1000), 255);
    assert_eq!(
        hash_bucket("foobar", 1000),
        (0x8594_4171_f739_67e8u64 % 1000) as u32
    );
    assert_eq!(hash_bucket("anything", 1), 0);
}

#[test]
fn a_vocabulary_orders_by_count_then_value_and_keeps_id_0_for_the_rest() {
    let mut builder = VocabularyBuilder::new();
    // Counts: "b" 3, 7 3, "a" 2, "c" 1, 9 2.
    builder.add_all(["b", "a", "b", "c", "a", "b"]);
    builder.add_all([7u64, 9, 7, 7, 9]);
    assert_eq!(builder.count("b"), 3);
    assert_eq!(builder.count(9u64), 2);
    let all = builder.build(0);
    // Ties: integers before strings, then ascending.
    let want = [
        Category::Int(7),
        Category::Str("b".into()),
        Category::Int(9),
        Category::Str("a".into()),
        Category::Str("c".into()),
    ];
    assert_eq!(all.values(), want);
    assert_eq!(all.size(), 6);
    assert_eq!(all.id(7u64), 1);
    assert_eq!(all.id("b"), 2);
    assert_eq!(all.id("c"), 5);
    assert_eq!(all.id("zz"), 0);
    assert_eq!(all.id(8u64), 0);
    // "7" the string is not 7 the integer.
    assert_eq!(all.id("7"), 0);

    let frequent = builder.build(3);
    assert_eq!(frequent.values(), &want[..2]);
    assert_eq!(frequent.id("a"), 0);

    // The order of the rows does not matter.
    let mut reversed = VocabularyBuilder::new();
    reversed.add_all([9u64, 7, 7, 9, 7]);
    reversed.add_all(["b", "a", "c", "b", "a", "b"]);
    assert_eq!(reversed.build(0), all);
}

#[test]
fn encoders_map_raw_values_by_field_and_refuse_bad_vocabularies() {
    let vocabulary =
        Vocabulary::from_values(vec![Category::Str("fr".into()), Category::Int(3)]).unwrap();
    let mut encoders = Encoders::new();
    encoders.insert("country", FieldEncoder::Vocabulary(vocabulary));
    encoders.insert("user", FieldEncoder::Hash { buckets: 97 });
    assert_eq!(encoders.ids("country", ["fr", "de"]).unwrap(), [1, 0]);
    assert_eq!(encoders.ids("country", [3u64]).unwrap(), [2]);
    let users = encoders.ids("user", [1u64, 2, 3]).unwrap();
    assert!(users.iter().all(|&id| id < 97));
    assert_eq!(encoders.get("user").unwrap().size(), 97);
    let names: Vec<&str> = encoders.iter().map(|(name, _)| name).collect();
    assert_eq!(names, ["country", "user"]);
    let e = encoders.ids("city", ["x"]).unwrap_err().to_string();
    assert!(e.contains("`city`"), "{e}");
    let twice = Vocabulary::from_values(vec![Category::Int(1), Category::Int(1)]);
    assert!(twice.unwrap_err().to_string().contains("twice"));
}
