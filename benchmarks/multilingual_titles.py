"""A multilingual marketplace-title test set, generated: short titles, planted copies, hard negatives.

No public labelled set of short multilingual marketplace titles is in ``../shared/data``, so
this module makes one, deterministically from a seed, to measure the listing-text
near-duplicate decision where the English shop-to-shop ER pairs cannot: titles of two to
ten words, no description, usually no price, in eight languages and five scripts
(Indonesian, English, Spanish, Portuguese, Vietnamese, Thai, Russian, Chinese), with the
Indonesian-English mix of South-East Asian marketplaces weighted highest.

How it is made:

- **Products.** A product is a product type (16 types: honey, rice, sugar, T-shirts,
  pencil leads, phone cases, flash drives, serums, cooking oil, running shoes, diapers,
  coffee, earbuds, detergent, hijabs, tea), written in one language, with a brand (an
  invented word from syllables, so no model has seen it), often a variant (a colour) and
  a size from the type's usual sizes ("1 Kg", "500 ml", "0.5 mm", "64GB", "XL"); phone
  cases, flash drives and earbuds also carry a model code. Types are drawn so that many
  products share a type and a size: the hard negatives the issue names (different brands
  of "Gula Pasir 1 Kg"; "0.5 mm" on unrelated things) and same-brand products that differ
  only in size are in the set by construction.
- **Listings of one product** (the positives): each seller writes the title afresh from
  the product's parts: reordered, cased differently, with or without marketing words
  ("Murah", "Ready Stock", "Bisa COD", "正品", "ส่งฟรี"), units spaced or not ("1 Kg",
  "1kg"); some are light edits of another seller's title (a word swapped for a marketing
  word, a letter typo, a word dropped); some are exact reposts. A share of the products
  have one listing only (a real catalogue's singletons).
- **Prices**: none, except the reposts, where one side carries a normal price and the
  other a bait price a tenth of it (``bait_pairs`` lists them).

Three splits with their own seeds: ``train`` (the pair scorer's weights may learn from it),
``valid`` (thresholds are chosen on it) and ``test`` (reported, never used to fit or choose).
Brands are invented per split, so a split rarely shares one with another. Russian and
Portuguese titles appear only in ``test``: languages never seen while fitting or choosing.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal

Split = Literal["train", "valid", "test"]

LANGS: tuple[str, ...] = ("id", "en", "es", "pt", "vi", "th", "ru", "zh")
_VALID_LANGS = ("id", "en", "es", "vi", "th", "zh")
# Shares of the products' languages: Indonesian (with English words) first, as on the
# marketplaces the held-out titles come from.
_LANG_WEIGHTS = {"id": 0.45, "en": 0.15, "es": 0.08, "pt": 0.06, "vi": 0.08, "th": 0.06, "ru": 0.06,
                 "zh": 0.06}

# type -> language -> the product-type phrase; sizes; whether a model code is part of the product
_TYPES: dict[str, dict[str, str]] = {
    "honey": {"id": "Madu Hutan Asli", "en": "Pure Forest Honey", "es": "Miel de Bosque Pura",
              "pt": "Mel Silvestre Puro", "vi": "Mật Ong Rừng Nguyên Chất", "th": "น้ำผึ้งป่าแท้",
              "ru": "Мёд лесной натуральный", "zh": "纯天然森林蜂蜜"},
    "rice": {"id": "Beras Pandan Wangi", "en": "Fragrant Pandan Rice", "es": "Arroz Jazmín Premium",
             "pt": "Arroz Agulhinha Tipo 1", "vi": "Gạo Thơm Dẻo", "th": "ข้าวหอมมะลิ",
             "ru": "Рис жасминовый", "zh": "泰国香米"},
    "sugar": {"id": "Gula Pasir Putih", "en": "White Granulated Sugar", "es": "Azúcar Blanca Refinada",
              "pt": "Açúcar Refinado", "vi": "Đường Trắng Tinh Luyện", "th": "น้ำตาลทรายขาว",
              "ru": "Сахар белый", "zh": "白砂糖"},
    "tshirt": {"id": "Kaos Polos Cotton Combed 30s", "en": "Plain Cotton T-Shirt Crew Neck",
               "es": "Camiseta Básica de Algodón", "pt": "Camiseta Lisa Algodão",
               "vi": "Áo Thun Trơn Cotton", "th": "เสื้อยืดคอกลมผ้าฝ้าย", "ru": "Футболка хлопковая",
               "zh": "纯棉圆领T恤"},
    "lead": {"id": "Isi Pensil Mekanik", "en": "Mechanical Pencil Lead Refill",
             "es": "Minas para Portaminas", "pt": "Grafite para Lapiseira", "vi": "Ruột Bút Chì Kim",
             "th": "ไส้ดินสอกด", "ru": "Грифели для карандаша", "zh": "自动铅笔芯"},
    "case": {"id": "Case HP Silikon Bening", "en": "Clear Silicone Phone Case",
             "es": "Funda de Silicona Transparente", "pt": "Capinha de Silicone Transparente",
             "vi": "Ốp Lưng Silicon Trong Suốt", "th": "เคสโทรศัพท์ซิลิโคนใส",
                 "ru": "Чехол силиконовый прозрачный",
             "zh": "透明硅胶手机壳"},
    "flash": {"id": "Flashdisk USB 3.0", "en": "USB 3.0 Flash Drive", "es": "Memoria USB 3.0",
              "pt": "Pen Drive USB 3.0", "vi": "USB 3.0 Tốc Độ Cao", "th": "แฟลชไดร์ฟ USB 3.0",
              "ru": "Флешка USB 3.0", "zh": "U盘 USB3.0 高速"},
    "serum": {"id": "Serum Wajah Vitamin C", "en": "Vitamin C Face Serum", "es": "Sérum Facial Vitamina C",
              "pt": "Sérum Facial Vitamina C", "vi": "Serum Vitamin C Dưỡng Trắng Da",
              "th": "เซรั่มวิตามินซีบำรุงผิวหน้า", "ru": "Сыворотка для лица с витамином C",
              "zh": "维C美白精华液"},
    "oil": {"id": "Minyak Goreng Sawit", "en": "Palm Cooking Oil", "es": "Aceite de Cocina Vegetal",
            "pt": "Óleo de Cozinha Vegetal", "vi": "Dầu Ăn Thực Vật", "th": "น้ำมันพืชสำหรับทอด",
            "ru": "Масло растительное для жарки", "zh": "食用植物油"},
    "shoes": {"id": "Sepatu Lari Pria Running", "en": "Men's Running Shoes Lightweight",
              "es": "Zapatillas de Running Hombre", "pt": "Tênis de Corrida Masculino",
              "vi": "Giày Chạy Bộ Nam Siêu Nhẹ", "th": "รองเท้าวิ่งผู้ชายน้ำหนักเบา",
                  "ru": "Кроссовки беговые мужские",
              "zh": "男士轻便跑步鞋"},
    "diaper": {"id": "Popok Bayi Celana", "en": "Baby Diaper Pants", "es": "Pañales Tipo Calzón Bebé",
               "pt": "Fralda Calça Infantil", "vi": "Tã Quần Em Bé", "th": "ผ้าอ้อมเด็กแบบกางเกง",
               "ru": "Подгузники-трусики детские", "zh": "婴儿拉拉裤"},
    "coffee": {"id": "Kopi Bubuk Arabika Gayo", "en": "Ground Arabica Coffee Medium Roast",
               "es": "Café Molido Arábica Tostado", "pt": "Café Moído Arábica Torrado",
               "vi": "Cà Phê Bột Arabica Rang Xay", "th": "กาแฟคั่วบดอาราบิก้า", "ru": "Кофе молотый арабика",
               "zh": "阿拉比卡研磨咖啡粉"},
    "earbuds": {"id": "Earphone Bluetooth TWS Bass", "en": "TWS Bluetooth Earbuds Wireless",
                "es": "Auriculares Bluetooth TWS Inalámbricos", "pt": "Fone de Ouvido Bluetooth TWS",
                "vi": "Tai Nghe Bluetooth TWS Không Dây", "th": "หูฟังบลูทูธไร้สาย TWS",
                "ru": "Беспроводные наушники TWS", "zh": "无线蓝牙耳机TWS"},
    "detergent": {"id": "Deterjen Cair Pewangi", "en": "Liquid Laundry Detergent",
                  "es": "Detergente Líquido para Ropa", "pt": "Sabão Líquido para Roupas",
                  "vi": "Nước Giặt Xả Thơm", "th": "น้ำยาซักผ้าสูตรเข้มข้น",
                      "ru": "Жидкое средство для стирки",
                  "zh": "浓缩洗衣液"},
    "hijab": {"id": "Jilbab Segi Empat Voal", "en": "Square Voile Hijab Scarf",
        "es": "Hiyab Cuadrado de Voile",
              "pt": "Hijab Quadrado Voil", "vi": "Khăn Trùm Đầu Hijab Voan", "th": "ผ้าคลุมฮิญาบสี่เหลี่ยม",
              "ru": "Хиджаб платок квадратный", "zh": "方形头巾"},
    "tea": {"id": "Teh Hijau Celup", "en": "Green Tea Bags", "es": "Té Verde en Bolsitas",
            "pt": "Chá Verde em Sachês", "vi": "Trà Xanh Túi Lọc", "th": "ชาเขียวชนิดซอง",
                "ru": "Чай зелёный в пакетиках",
            "zh": "绿茶茶包"},
}
_SIZES: dict[str, tuple[str, ...]] = {
    "honey": ("1 Kg", "500 gr", "250 ml"), "rice": ("1 Kg", "5 Kg", "10 Kg"), "sugar": ("1 Kg", "500 gr"),
    "tshirt": ("M", "L", "XL"), "lead": ("0.5 mm", "0.7 mm"), "case": ("",), "flash": ("32GB",
        "64GB", "128GB"),
    "serum": ("20 ml", "30 ml"), "oil": ("1 L", "2 L"), "shoes": ("40", "42", "43"),
        "diaper": ("M 34", "L 30"),
    "coffee": ("250 gr", "1 Kg"), "earbuds": ("",), "detergent": ("800 ml", "1 L"), "hijab": ("",),
    "tea": ("25 pcs", "50 pcs"),
}
_CODED = {"case", "flash", "earbuds"}
_PHONES = ("iPhone 13", "iPhone 14 Pro", "Samsung A52", "Samsung A14", "Redmi Note 12",
    "Oppo A57", "Vivo Y21")
_COLOURS: dict[str, tuple[str, ...]] = {
    "id": ("Hitam", "Putih", "Merah", "Biru", "Hijau"), "en": ("Black", "White", "Red", "Blue", "Green"),
    "es": ("Negro", "Blanco", "Rojo", "Azul", "Verde"), "pt": ("Preto", "Branco", "Vermelho",
        "Azul", "Verde"),
    "vi": ("Đen", "Trắng", "Đỏ", "Xanh Dương", "Xanh Lá"), "th": ("สีดำ", "สีขาว", "สีแดง",
        "สีน้ำเงิน", "สีเขียว"),
    "ru": ("чёрный", "белый", "красный", "синий", "зелёный"), "zh": ("黑色", "白色", "红色", "蓝色", "绿色"),
}
_COLOURED = {"tshirt", "case", "shoes", "hijab", "earbuds", "flash"}
_MARKETING: dict[str, tuple[str, ...]] = {
    "id": ("Murah", "Original", "Ready Stock", "Termurah", "Promo", "Grosir", "Bisa COD", "Best Seller",
           "Free Ongkir", "Terlaris", "Import", "Kualitas Premium"),
    "en": ("Cheap", "Original", "Ready Stock", "Best Seller", "Promo", "Free Shipping", "New", "Hot Sale"),
    "es": ("Barato", "Original", "Oferta", "Envío Gratis", "Nuevo", "Más Vendido"),
    "pt": ("Barato", "Original", "Promoção", "Frete Grátis", "Novo", "Mais Vendido"),
    "vi": ("Giá Rẻ", "Chính Hãng", "Hàng Mới", "Freeship", "Sale Sốc", "Bán Chạy"),
    "th": ("ของแท้", "ราคาถูก", "ส่งฟรี", "พร้อมส่ง", "ลดราคา", "ขายดี"),
    "ru": ("Оригинал", "Недорого", "Акция", "Новинка", "Бесплатная доставка", "Хит продаж"),
    "zh": ("正品", "包邮", "特价", "新款", "热卖", "现货"),
}
_SYLLABLES = ("ka", "lo", "mi", "ra", "zen", "to", "bu", "sa", "ri", "vo", "ne", "da", "ku", "pa", "ti", "mo",
              "xe", "lu", "ga", "fi", "ro", "ya", "no", "be", "shi", "ta", "do", "ze", "ha", "wi")


@dataclass(frozen=True, slots=True)
class Product:
    product_id: str
    lang: str
    kind: str
    brand: str
    colour: str
    size: str
    code: str


@dataclass(frozen=True, slots=True)
class TitleListing:
    listing_id: str
    product_id: str
    lang: str
    title: str
    price: float | None
    how: str  # "rewrite", "edit", "repost" (exact copy, bait price) or "original"


@dataclass(frozen=True, slots=True)
class TitleSet:
    split: Split
    listings: list[TitleListing]
    bait_pairs: list[tuple[str, str]]  # (original, bait-priced exact repost)

    def groups(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for item in self.listings:
            out.setdefault(item.product_id, []).append(item.listing_id)
        return out


def _brand(rng: random.Random, taken: set[str]) -> str:
    while True:
        name = "".join(rng.choice(_SYLLABLES) for _ in range(rng.choice((2, 2, 3)))).capitalize()
        if name not in taken:
            taken.add(name)
            return name


def _code(rng: random.Random, kind: str) -> str:
    if kind == "case":
        return rng.choice(_PHONES)
    letters = "".join(rng.choice("ABCDEFGHJKLMNPRSTUVWXYZ") for _ in range(rng.choice((1, 2, 3))))
    return f"{letters}{rng.randint(10, 999)}"


def _join(words: list[str]) -> str:
    # Thai and Chinese titles too separate their parts (brand, type, size) by spaces.
    return " ".join(w for w in words if w)


def _size_form(rng: random.Random, size: str) -> str:
    if not size or " " not in size or rng.random() < 0.5:
        return size
    value, unit = size.split(" ", 1)
    return rng.choice((f"{value}{unit}", f"{value} {unit.upper()}", f"{value}{unit.lower()}"))


def _render(rng: random.Random, p: Product) -> str:
    """A seller's own title of the product: its parts in some order, with some marketing words."""
    kind = _TYPES[p.kind][p.lang]
    parts = [p.brand, kind, p.code, p.colour, _size_form(rng, p.size)]
    core = [x for x in parts if x]
    r = rng.random()
    if r < 0.3:  # type first, brand later
        core = [kind, p.brand] + [x for x in core if x not in (kind, p.brand)]
    elif r < 0.4:  # size or colour up front
        rng.shuffle(core)
    market = list(_MARKETING[p.lang])
    if p.lang == "id":  # Indonesian titles borrow English marketing words
        market += list(_MARKETING["en"][:4])
    extra = rng.sample(market, rng.choice((0, 0, 1, 1, 2)))
    words = core + extra if rng.random() < 0.6 else extra + core
    title = _join(words)
    if rng.random() < 0.15 and p.lang not in ("zh", "th"):
        title = title.upper()
    elif rng.random() < 0.1 and p.lang not in ("zh", "th"):
        title = title.lower()
    if rng.random() < 0.15:
        title = f"[{rng.choice(market)}] {title}"
    return title


def _edit(rng: random.Random, title: str, lang: str) -> str:
    """A light edit of another seller's title: a word swapped, a typo, a word dropped."""
    words = title.split(" ")
    r = rng.random()
    if r < 0.4 or len(words) < 3:
        i = rng.randrange(len(words))
        words[i] = rng.choice(_MARKETING[lang])
    elif r < 0.7 and lang not in ("zh", "th"):
        cands = [i for i, w in enumerate(words) if len(w) >= 4 and w.isalpha()]
        if cands:
            i = rng.choice(cands)
            w = words[i]
            j = rng.randrange(len(w) - 1)
            words[i] = w[:j] + w[j + 1] + w[j] + w[j + 2:]
    else:
        del words[rng.randrange(len(words))]
    return " ".join(words)


def make(split: Split, products: int | None = None) -> TitleSet:
    """The split's listings; ``products`` defaults to 1,200 (about 3,000 listings)."""
    seed = {"train": 16_000, "valid": 16_001, "test": 16_002}[split]
    rng = random.Random(seed)
    n = products or 1_200
    langs = LANGS if split == "test" else _VALID_LANGS
    weights = [_LANG_WEIGHTS[x] for x in langs]
    taken: set[str] = {"None"}  # two syllables that spell a word the reader would misread
    # Few brands per (type, language), so products share brands and sizes: hard negatives.
    brands: dict[tuple[str, str], list[str]] = {}
    kinds = sorted(_TYPES)
    out: list[TitleListing] = []
    bait: list[tuple[str, str]] = []
    seen_products: set[tuple[str, ...]] = set()
    pid = 0
    split_tag = {"train": "r", "valid": "v", "test": "t"}[split]
    while pid < n:
        lang = rng.choices(langs, weights)[0]
        kind = rng.choice(kinds)
        pool = brands.setdefault((kind, lang), [_brand(rng, taken) for _ in range(rng.choice((2, 3, 4)))])
        brand = rng.choice(pool)
        colour = rng.choice(_COLOURS[lang]) if kind in _COLOURED and rng.random() < 0.6 else ""
        size = rng.choice(_SIZES[kind])
        code = _code(rng, kind) if kind in _CODED else ""
        key = (lang, kind, brand, colour, size, code)
        if key in seen_products:
            continue
        seen_products.add(key)
        p = Product(f"{split_tag}p{pid:05d}", lang, kind, brand, colour, size, code)
        pid += 1
        count = rng.choices((1, 2, 3, 4, 5, 6), (0.25, 0.3, 0.2, 0.12, 0.08, 0.05))[0]
        titles: list[tuple[str, str]] = []
        for k in range(count):
            if k and rng.random() < 0.25:
                titles.append((_edit(rng, rng.choice(titles)[0], lang), "edit"))
            else:
                titles.append((_render(rng, p), "rewrite" if k else "original"))
        for title, how in titles:
            out.append(TitleListing(f"{split_tag}{len(out):06d}", p.product_id, lang, title, None, how))
        if rng.random() < 0.12:  # a scam repost: the very text, a bait price
            first = out[-len(titles)]
            normal = float(rng.choice((25_000, 49_000, 120_000, 350_000)))
            out[-len(titles)] = TitleListing(first.listing_id, first.product_id, lang, first.title, normal,
                                             first.how)
            copy = TitleListing(f"{split_tag}{len(out):06d}", p.product_id, lang, first.title, normal / 10,
                                "repost")
            out.append(copy)
            bait.append((first.listing_id, copy.listing_id))
    return TitleSet(split, out, bait)
